//! Test component: a trivial prompt builder (world `prompt-builder`, exporting
//! `pipehost:plugin/prompt-build@0.1.0`). It returns one user message whose content is the
//! request's variable values joined by newlines; config is `{}`.
//!
//! Loading it where a post-processor is expected must be rejected with a message naming the
//! mismatch (the component exports `prompt-build`, not `post-process`). For the reverse case
//! (a post-processor loaded as a prompt builder) use `guest-empty`.
use pipehost_plugin_sdk::{Context, Message, PluginError, PromptBuilder, export_prompt_builder};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

pub struct WrongWorld;

impl PromptBuilder for WrongWorld {
    type Config = Config;

    fn build(
        vars: &[(String, String)],
        _history: &[Message],
        _config: &Config,
        _ctx: &Context,
    ) -> Result<Vec<Message>, PluginError> {
        let content = vars.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join("\n");
        Ok(vec![Message::new("user", content)])
    }
}

export_prompt_builder!(WrongWorld);
