//! Component glue: maps the WIT exports onto the SDK traits. Only built for wasm32.

use std::cell::RefCell;
use std::marker::PhantomData;

use crate::{ChunkOutput, Context, LogLevel, Message, PluginError, PostProcessor, PromptBuilder, Streamer};

pub mod post_processor {
    wit_bindgen::generate!({
        world: "post-processor",
        path: "../../wit",
        default_bindings_module: "pipehost_plugin_sdk::wasm::post_processor",
        pub_export_macro: true,
    });
}

pub mod prompt_builder {
    wit_bindgen::generate!({
        world: "prompt-builder",
        path: "../../wit",
        default_bindings_module: "pipehost_plugin_sdk::wasm::prompt_builder",
        pub_export_macro: true,
    });
}

use post_processor::exports::pipehost::plugin::post_process as pp;
use post_processor::pipehost::plugin::types as pp_types;
use prompt_builder::exports::pipehost::plugin::prompt_build as pb;
use prompt_builder::pipehost::plugin::types as pb_types;

pub(crate) fn log(level: LogLevel, message: &str) {
    use post_processor::pipehost::plugin::host::{Level, log};
    let level = match level {
        LogLevel::Trace => Level::Trace,
        LogLevel::Debug => Level::Debug,
        LogLevel::Info => Level::Info,
        LogLevel::Warn => Level::Warn,
        LogLevel::Error => Level::Error,
    };
    log(level, message);
}

macro_rules! error_conversions {
    ($types:ident) => {
        impl From<PluginError> for $types::PluginError {
            fn from(e: PluginError) -> Self {
                match e {
                    PluginError::InvalidConfig(m) => Self::InvalidConfig(m),
                    PluginError::InvalidInput(m) => Self::InvalidInput(m),
                    PluginError::Internal(m) => Self::Internal(m),
                }
            }
        }
        impl From<$types::Context> for Context {
            fn from(c: $types::Context) -> Self {
                Context { pipeline: c.pipeline, request_id: c.request_id, stage: c.stage }
            }
        }
    };
}
error_conversions!(pp_types);
error_conversions!(pb_types);

pub struct PostProcessorExport<P>(PhantomData<fn() -> P>);

impl<P: PostProcessor> pp::Guest for PostProcessorExport<P> {
    type Streamer = StreamExport<P>;

    fn validate_config(config: String) -> Result<(), pp_types::PluginError> {
        P::config(&config).map(|_| ()).map_err(Into::into)
    }

    fn process(
        text: String,
        ctx: pp_types::Context,
        config: String,
    ) -> Result<String, pp_types::PluginError> {
        let config = P::config(&config)?;
        Ok(P::process(&text, &config, &ctx.into())?)
    }
}

pub struct StreamExport<P> {
    inner: RefCell<Box<dyn Streamer>>,
    _plugin: PhantomData<fn() -> P>,
}

impl<P: PostProcessor> pp::GuestStreamer for StreamExport<P> {
    fn open(config: String, ctx: pp_types::Context) -> Result<pp::Streamer, pp_types::PluginError> {
        let config = P::config(&config)?;
        let inner = P::open(config, ctx.into())?;
        Ok(pp::Streamer::new(StreamExport::<P> { inner: RefCell::new(inner), _plugin: PhantomData }))
    }

    fn push(&self, chunk: String) -> Result<pp_types::ChunkOutput, pp_types::PluginError> {
        let ChunkOutput { emit, stop } = self.inner.borrow_mut().push(&chunk)?;
        Ok(pp_types::ChunkOutput { emit, stop })
    }

    fn finish(&self) -> Result<String, pp_types::PluginError> {
        Ok(self.inner.borrow_mut().finish()?)
    }
}

pub struct PromptBuilderExport<B>(PhantomData<fn() -> B>);

impl<B: PromptBuilder> pb::Guest for PromptBuilderExport<B> {
    fn validate_config(config: String) -> Result<(), pb_types::PluginError> {
        B::config(&config).map(|_| ()).map_err(Into::into)
    }

    fn build(
        vars: Vec<(String, String)>,
        history: Vec<pb_types::Message>,
        ctx: pb_types::Context,
        config: String,
    ) -> Result<Vec<pb_types::Message>, pb_types::PluginError> {
        let config = B::config(&config)?;
        let history: Vec<Message> =
            history.into_iter().map(|m| Message { role: m.role, content: m.content }).collect();
        let messages = B::build(&vars, &history, &config, &ctx.into())?;
        Ok(messages.into_iter().map(|m| pb_types::Message { role: m.role, content: m.content }).collect())
    }
}
