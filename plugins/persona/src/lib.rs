//! `persona`: the prompt builder for subjective tasks (creative writing, companionship, open
//! questions, style imitation). It assembles a system prompt in a fixed **Role / Style /
//! Constraints** structure and renders the user message from the pipeline author's
//! [minijinja](https://docs.rs/minijinja) template.
//!
//! # Config
//!
//! ```yaml
//! prompt:
//!   builder: persona
//!   config:
//!     role: 你是一位现代诗人。
//!     style: 用意象说话，不直接抒情。
//!     constraints:
//!       - 至少调动两种感官
//!       - 不超过6行
//!       - "{% if mood %}整体基调：{{ mood }}{% endif %}"   # renders empty without a mood: dropped
//!     template: 以「{{ topic }}」为题写一首诗。
//!     variables:
//!       - { name: topic, required: true, max_chars: 50 }
//!       - { name: mood, max_chars: 20 }
//!     history: false
//! ```
//!
//! | field | default | meaning |
//! | --- | --- | --- |
//! | `template` | — (required) | the user message, a minijinja template |
//! | `system` | none | free system text (a template), placed before the structured sections |
//! | `role` | none | who the model is (a template) |
//! | `style` | none | how it writes (a template) |
//! | `constraints` | `[]` | hard rules, one template each; a bulleted list |
//! | `labels` | `auto` | section headings: `auto`, `zh`, `en` or `none` (see below) |
//! | `variables` | `[]` | the request variables the templates may use (see below) |
//! | `history` | `true` | put the conversation history between the system and the user message |
//!
//! Each variable is `{name, required, default, max_chars}`: `name` (an identifier:
//! ASCII letters, digits, `_`, not starting with a digit), `required` (default `false`),
//! `default` (a string; not allowed together with `required: true`), `max_chars` (a limit on
//! the value's length in characters, i.e. Unicode scalar values; none by default).
//!
//! # Output
//!
//! `[system?, history..., user]`. The system message is the non-empty parts below, each rendered
//! and trimmed, joined by a blank line; when all are empty there is no system message.
//!
//! 1. `system`, as written;
//! 2. `role`, under the heading `# Role` (`# 角色`);
//! 3. `style`, under `# Style` (`# 风格`);
//! 4. `constraints` that render non-empty, under `# Constraints` (`# 约束`), each as a `- ` bullet
//!    (continuation lines indented by two spaces).
//!
//! `labels: auto` uses the Chinese headings when `role`, `style` or a constraint contains a CJK
//! ideograph, the English ones otherwise; `none` omits the headings (sections stay in order).
//! The user message is the rendered `template`, trimmed; if it comes out empty the request is
//! rejected (`invalid-input`). History messages keep their order; `system` messages in the
//! history are dropped, so a client cannot replace the pipeline's system prompt.
//!
//! # Templates and variables
//!
//! All of `system`, `role`, `style`, each constraint and `template` are minijinja templates over
//! the declared variables, rendered with: auto-escaping off (these are chat messages, not HTML);
//! strict undefined behaviour (using an undefined name is an error, not an empty string);
//! `trim_blocks` and `lstrip_blocks` on (a `{% ... %}` tag alone on its line leaves no blank
//! line); a fuel limit of [`FUEL`] instructions per template, so a runaway loop fails fast
//! (the host's wall-clock deadline is the second line of defence). To write a literal `{{`,
//! use `{% raw %}{{{% endraw %}`. There is no template loader: `{% include %}`,
//! `{% extends %}` and `{% import %}` fail.
//!
//! Request variables are **data**: their values are inserted as strings and never parsed or
//! evaluated as template code, so a value `{{ 7*7 }}` appears as `{{ 7*7 }}`.
//!
//! # Errors
//!
//! At load (`validate-config`) — `invalid-config`: unknown config fields; a template syntax
//! error (minijinja's message, with the field and line, e.g. `` `template`: syntax error: ...
//! (in template:2) ``); a template that uses a variable that is not declared (naming both);
//! a bad, duplicate or reserved (a minijinja global such as `range`) variable name; `required`
//! together with `default`; a `default` longer than `max_chars`.
//!
//! Per request — `invalid-input`: a required variable missing or blank (naming it); a value
//! longer than `max_chars` (naming the variable and the limit); a variable that is not declared
//! (naming it: catches typos in clients); a variable given twice; an empty user message.
//! A template that fails while rendering (out of fuel, a runtime error such as
//! `{{ topic.title }}` under strict undefined) is `invalid-config`: it is the template's fault.
//! An optional variable that is absent takes its `default`, or the empty string.

use std::collections::{BTreeMap, HashSet};

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use pipehost_plugin_sdk::{Context, Message, PluginError, PromptBuilder, export_prompt_builder};
use serde::Deserialize;

/// Instructions one template may execute per render (minijinja's `fuel`). Real prompt templates
/// use a few hundred; nested loops over `range(...)` run out quickly.
pub const FUEL: u64 = 100_000;

/// The stage config. See the crate docs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub style: Option<String>,
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub labels: Labels,
    pub template: String,
    #[serde(default)]
    pub variables: Vec<Variable>,
    #[serde(default = "yes")]
    pub history: bool,
}

fn yes() -> bool {
    true
}

/// Headings of the Role / Style / Constraints sections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Labels {
    #[default]
    Auto,
    Zh,
    En,
    None,
}

/// A declared request variable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    pub name: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub max_chars: Option<usize>,
}

/// The template fields of a config, with the names used in error messages.
fn templates(config: &Config) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    if let Some(s) = &config.system {
        out.push(("system".to_owned(), s.as_str()));
    }
    if let Some(s) = &config.role {
        out.push(("role".to_owned(), s.as_str()));
    }
    if let Some(s) = &config.style {
        out.push(("style".to_owned(), s.as_str()));
    }
    for (i, c) in config.constraints.iter().enumerate() {
        out.push((format!("constraints[{i}]"), c.as_str()));
    }
    out.push(("template".to_owned(), config.template.as_str()));
    out
}

fn environment<'s>() -> Environment<'s> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_fuel(Some(FUEL));
    env
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn config_error(field: &str, e: &minijinja::Error) -> PluginError {
    PluginError::InvalidConfig(format!("`{field}`: {e}"))
}

/// Renders one template field with the request's variables.
fn render(env: &Environment<'_>, field: &str, source: &str, vars: &Value) -> Result<String, PluginError> {
    let template = env.template_from_named_str(field, source).map_err(|e| config_error(field, &e))?;
    let rendered = template.render(vars).map_err(|e| config_error(field, &e))?;
    Ok(rendered.trim().to_owned())
}

fn has_cjk(text: &str) -> bool {
    text.chars().any(|c| {
        matches!(c, '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}' | '\u{20000}'..='\u{2FA1F}')
    })
}

/// The persona prompt builder.
pub struct Persona;

impl PromptBuilder for Persona {
    type Config = Config;

    fn check_config(config: &Config) -> Result<(), PluginError> {
        let env = environment();
        let reserved: HashSet<&str> = env.globals().map(|(name, _)| name).collect();
        let mut declared = HashSet::new();
        for var in &config.variables {
            let name = var.name.as_str();
            if !is_identifier(name) {
                return Err(PluginError::InvalidConfig(format!(
                    "variable name `{name}` is not an identifier (letters, digits, `_`; not starting with a digit)"
                )));
            }
            if reserved.contains(name) {
                return Err(PluginError::InvalidConfig(format!(
                    "variable name `{name}` is reserved (a template global)"
                )));
            }
            if !declared.insert(name) {
                return Err(PluginError::InvalidConfig(format!("variable `{name}` is declared twice")));
            }
            if var.required && var.default.is_some() {
                return Err(PluginError::InvalidConfig(format!(
                    "variable `{name}` is required and has a default: choose one"
                )));
            }
            if let (Some(default), Some(max)) = (&var.default, var.max_chars)
                && default.chars().count() > max
            {
                return Err(PluginError::InvalidConfig(format!(
                    "the default of variable `{name}` is longer than its max_chars ({max})"
                )));
            }
        }
        for (field, source) in templates(config) {
            let template =
                env.template_from_named_str(&field, source).map_err(|e| config_error(&field, &e))?;
            let mut undeclared: Vec<String> = template
                .undeclared_variables(false)
                .into_iter()
                .filter(|name| !declared.contains(name.as_str()) && !reserved.contains(name.as_str()))
                .collect();
            undeclared.sort();
            if let Some(name) = undeclared.first() {
                let known = if declared.is_empty() {
                    "none are declared".to_owned()
                } else {
                    let mut names: Vec<&str> = declared.iter().copied().collect();
                    names.sort_unstable();
                    format!("declared: {}", names.join(", "))
                };
                return Err(PluginError::InvalidConfig(format!(
                    "`{field}` uses variable `{name}`, which is not declared in `variables` ({known})"
                )));
            }
        }
        Ok(())
    }

    fn build(
        vars: &[(String, String)],
        history: &[Message],
        config: &Config,
        _ctx: &Context,
    ) -> Result<Vec<Message>, PluginError> {
        let values = bind_variables(vars, config)?;
        let values = Value::from(values);
        let env = environment();

        let mut parts = Vec::new();
        if let Some(system) = &config.system {
            let text = render(&env, "system", system, &values)?;
            if !text.is_empty() {
                parts.push(text);
            }
        }
        let (role_h, style_h, constraints_h) = headings(config);
        let mut section = |heading: Option<&str>, body: String| {
            if !body.is_empty() {
                parts.push(match heading {
                    Some(h) => format!("{h}\n{body}"),
                    None => body,
                });
            }
        };
        if let Some(role) = &config.role {
            section(role_h, render(&env, "role", role, &values)?);
        }
        if let Some(style) = &config.style {
            section(style_h, render(&env, "style", style, &values)?);
        }
        let mut bullets = Vec::new();
        for (i, c) in config.constraints.iter().enumerate() {
            let text = render(&env, &format!("constraints[{i}]"), c, &values)?;
            if !text.is_empty() {
                bullets.push(format!("- {}", text.replace('\n', "\n  ")));
            }
        }
        section(constraints_h, bullets.join("\n"));

        let user = render(&env, "template", &config.template, &values)?;
        if user.is_empty() {
            return Err(PluginError::InvalidInput("the user message rendered empty".to_owned()));
        }

        let mut messages = Vec::with_capacity(history.len() + 2);
        if !parts.is_empty() {
            messages.push(Message::new("system", parts.join("\n\n")));
        }
        if config.history {
            messages.extend(history.iter().filter(|m| m.role != "system").cloned());
        }
        messages.push(Message::new("user", user));
        Ok(messages)
    }
}

/// Checks the request's variables against the declarations and fills in defaults.
fn bind_variables(
    vars: &[(String, String)],
    config: &Config,
) -> Result<BTreeMap<String, Value>, PluginError> {
    let mut given: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, value) in vars {
        let Some(decl) = config.variables.iter().find(|v| &v.name == name) else {
            return Err(PluginError::InvalidInput(format!("unknown variable `{name}`")));
        };
        if given.insert(name, value).is_some() {
            return Err(PluginError::InvalidInput(format!("variable `{name}` is given twice")));
        }
        if let Some(max) = decl.max_chars
            && value.chars().count() > max
        {
            return Err(PluginError::InvalidInput(format!(
                "variable `{name}` is longer than its limit of {max} characters"
            )));
        }
    }
    let mut out = BTreeMap::new();
    for decl in &config.variables {
        let value = match given.get(decl.name.as_str()) {
            Some(v) if !(decl.required && v.trim().is_empty()) => (*v).to_owned(),
            _ if decl.required => {
                return Err(PluginError::InvalidInput(format!("missing required variable `{}`", decl.name)));
            }
            _ => decl.default.clone().unwrap_or_default(),
        };
        // A string value: minijinja prints it as is and never evaluates it.
        out.insert(decl.name.clone(), Value::from(value));
    }
    Ok(out)
}

fn headings(config: &Config) -> (Option<&'static str>, Option<&'static str>, Option<&'static str>) {
    let zh = match config.labels {
        Labels::None => return (None, None, None),
        Labels::Zh => true,
        Labels::En => false,
        Labels::Auto => {
            config.role.as_deref().is_some_and(has_cjk)
                || config.style.as_deref().is_some_and(has_cjk)
                || config.constraints.iter().any(|c| has_cjk(c))
        }
    };
    if zh {
        (Some("# 角色"), Some("# 风格"), Some("# 约束"))
    } else {
        (Some("# Role"), Some("# Style"), Some("# Constraints"))
    }
}

export_prompt_builder!(Persona);

#[cfg(test)]
mod tests;
