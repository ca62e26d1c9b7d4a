//! Returns its input unchanged: measures the host's fixed cost per call.
use pipehost_plugin_sdk::{Context, PluginError, PostProcessor, export_post_processor};

#[derive(serde::Deserialize)]
pub struct Config {}

pub struct Empty;

impl PostProcessor for Empty {
    type Config = Config;
    fn process(text: &str, _config: &Config, _ctx: &Context) -> Result<String, PluginError> {
        Ok(text.to_owned())
    }
}

export_post_processor!(Empty);
