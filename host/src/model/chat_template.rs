//! The model's own chat template (Jinja, from tokenizer_config.json or chat_template.jinja),
//! rendered like transformers' `apply_chat_template`: same environment options
//! (trim_blocks, lstrip_blocks), Python string methods, `raise_exception`, a Python-style
//! `tojson`, the special tokens and any template kwargs (e.g. `enable_thinking`).

use std::path::Path;

use minijinja::value::{Kwargs, Value as JValue, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{ModelError, Result};

/// One chat message. Extra keys (e.g. `reasoning_content`, `tool_calls`) reach the template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into(), extra: Map::new() }
    }
}

/// A compiled chat template plus the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: Map<String, Value>,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compile `source` with the named special tokens (`bos_token`, `eos_token`, ...).
    pub fn new(source: &str, special_tokens: Map<String, Value>) -> Result<Self> {
        let mut env = Environment::new();
        // transformers renders with these; without them whitespace differs and so do the ids.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_owned()).map_err(|e| ModelError::Template(describe(&e)))?;
        Ok(ChatTemplate { env, special_tokens })
    }

    /// The template of a model folder: `chat_template.jinja` if present (newer exports), else
    /// `chat_template` in tokenizer_config.json (a string, or a list of named templates from
    /// which "default" is used). `None` when the model has none.
    pub(crate) fn from_model_files(
        tokenizer_config: &Value,
        jinja_file: Option<&Path>,
    ) -> Result<Option<Self>> {
        let source = match jinja_file {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| ModelError::io(p, e))?),
            None => match tokenizer_config.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                _ => None,
            },
        };
        let Some(source) = source else { return Ok(None) };
        let mut special = Map::new();
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            // Either "<|im_end|>" or {"content": "<|im_end|>", ...} in older files.
            let token = match tokenizer_config.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            };
            if let Some(t) = token {
                special.insert(key.into(), Value::String(t));
            }
        }
        Self::new(&source, special).map(Some)
    }

    /// Render `messages`. `kwargs` are extra template variables (e.g. `enable_thinking`); they
    /// override the special tokens, as in transformers.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &Map<String, Value>,
    ) -> Result<String> {
        let mut ctx = self.special_tokens.clone();
        ctx.insert("messages".into(), serde_json::to_value(messages).unwrap_or(Value::Null));
        ctx.insert("add_generation_prompt".into(), Value::Bool(add_generation_prompt));
        for (k, v) in kwargs {
            ctx.insert(k.clone(), v.clone());
        }
        let template = self.env.get_template(NAME).map_err(|e| ModelError::Template(describe(&e)))?;
        template.render(&ctx).map_err(|e| ModelError::Template(describe(&e)))
    }
}

/// minijinja errors keep details (line, cause) out of `Display`; put them in the message.
fn describe(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

fn raise_exception(message: String) -> std::result::Result<JValue, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers offers `strftime_now(format)` (Llama 3 templates date the system prompt);
/// supports the common %Y %m %d %b %B %H %M %S in UTC.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Python's `json.dumps(x, ensure_ascii=False, indent=None)` as transformers' `tojson` does it:
/// ", " and ": " separators, no HTML escaping (minijinja's built-in escapes `<` and is compact).
fn tojson(value: JValue, kwargs: Kwargs) -> std::result::Result<JValue, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&value, indent, 0, &mut out)?;
    Ok(JValue::from_safe_string(out))
}

fn write_json(
    v: &JValue,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else if f.fract() == 0.0 && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}"));
                } else {
                    out.push_str(&f.to_string());
                }
            }
        }
        ValueKind::String => {
            out.push_str(&serde_json::to_string(v.as_str().unwrap_or("")).unwrap_or_default())
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<JValue> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<JValue> = v.try_iter()?.collect();
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let k = key.as_str().map(str::to_owned).unwrap_or_else(|| key.to_string());
                out.push_str(&serde_json::to_string(&k).unwrap_or_default());
                out.push_str(": ");
                write_json(&v.get_item(key)?, indent, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => out.push_str(&serde_json::to_string(&v.to_string()).unwrap_or_default()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                          {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    #[test]
    fn renders_chatml() {
        let t = ChatTemplate::new(CHATML, Map::new()).unwrap();
        let out = t
            .render(&[ChatMessage::new("system", "S"), ChatMessage::new("user", "hi")], true, &Map::new())
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_kwargs() {
        let src = "{{ messages[0].content.split('</think>')[-1].lstrip('\\n') }}|{{ 'x' if enable_thinking is false }}\
                   |{{ messages[0].content.startswith('a') }}";
        let t = ChatTemplate::new(src, Map::new()).unwrap();
        let mut kw = Map::new();
        kw.insert("enable_thinking".into(), Value::Bool(false));
        let out = t.render(&[ChatMessage::new("user", "a</think>\n\nb")], false, &kw).unwrap();
        // minijinja prints booleans the Python way, as transformers' Jinja does.
        assert_eq!(out, "b|x|True");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", Map::new()).unwrap();
        let err = t.render(&[], false, &Map::new()).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }

    #[test]
    fn tojson_is_pythons() {
        let t = ChatTemplate::new("{{ x | tojson }}", Map::new()).unwrap();
        let mut kw = Map::new();
        kw.insert("x".into(), serde_json::json!({"a": [1, 2.0, "<b>"], "c": null}));
        assert_eq!(t.render(&[], false, &kw).unwrap(), r#"{"a": [1, 2.0, "<b>"], "c": null}"#);
    }

    #[test]
    fn strftime_now_formats_a_date() {
        let s = strftime_now("%Y-%m-%d %b".into());
        assert_eq!(s.len(), "2025-01-01 Jan".len(), "{s}");
    }
}
