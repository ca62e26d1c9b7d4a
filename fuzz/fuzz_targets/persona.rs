//! The `persona` prompt builder (natively) on arbitrary request data: variable values and a
//! conversation history that may hold template syntax, chat special tokens and control
//! characters. `build` must not panic, and the values must come out literally: a request is
//! data, never template code (`{{ 7*7 }}` in a variable stays `{{ 7*7 }}`), and history
//! `system` messages never reach the output.
//!
//! Input layout: byte 0 picks the config (low bit); the rest, as lossy UTF-8 split on NUL, is
//! topic, mood, then alternating history roles/contents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persona::Persona;
use pipehost_plugin_sdk::{Context, Message, PromptBuilder};

const CONFIGS: [&str; 2] = [
    r#"{"role":"你是一位现代诗人。","style":"用意象说话。",
        "constraints":["不超过6行","{% if mood %}整体基调：{{ mood }}{% endif %}"],
        "template":"以「{{ topic }}」为题写一首诗。",
        "variables":[{"name":"topic","required":true,"max_chars":500},{"name":"mood","max_chars":200}],
        "history":false}"#,
    r#"{"system":"You are kind.","labels":"en","template":"[{{ topic }}] ({{ mood }})",
        "variables":[{"name":"topic","required":true},{"name":"mood","default":"calm"}]}"#,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let config = Persona::config(CONFIGS[(pick & 1) as usize]).expect("a valid config");
    let text = String::from_utf8_lossy(rest);
    let mut fields = text.split('\0');
    let topic = fields.next().unwrap_or_default().to_owned();
    let mood = fields.next();
    let mut vars = vec![("topic".to_owned(), topic.clone())];
    if let Some(mood) = mood {
        vars.push(("mood".to_owned(), mood.to_owned()));
    }
    let rest: Vec<&str> = fields.collect();
    let history: Vec<Message> = rest
        .chunks(2)
        .map(|p| Message { role: p[0].to_owned(), content: p.get(1).copied().unwrap_or("").to_owned() })
        .collect();
    let Ok(messages) = Persona::build(&vars, &history, &config, &Context::default()) else { return };
    let user = &messages.last().expect("at least the user message").content;
    let wrapped = if pick & 1 == 0 { format!("「{topic}」") } else { format!("[{topic}]") };
    assert!(user.contains(&wrapped), "topic {topic:?} not literal in {user:?}");
    let systems = messages.iter().filter(|m| m.role == "system").count();
    assert!(systems <= 1, "{systems} system messages: {messages:?}");
});
