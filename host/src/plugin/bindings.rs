//! Host-side bindings for the two worlds of `wit/plugin.wit`.
//!
//! Both worlds share the `types` and `host` interfaces; the prompt-builder bindings reuse the
//! post-processor's generated types so that one `host` implementation serves both.

pub(crate) mod post {
    wasmtime::component::bindgen!({
        world: "post-processor",
        path: "../wit",
    });
}

pub(crate) mod prompt {
    wasmtime::component::bindgen!({
        world: "prompt-builder",
        path: "../wit",
        with: {
            "pipehost:plugin/types": super::post::pipehost::plugin::types,
            "pipehost:plugin/host": super::post::pipehost::plugin::host,
        },
    });
}

pub(crate) use post::pipehost::plugin::host::Level;
pub(crate) use post::pipehost::plugin::types::{
    Context as WitContext, Message as WitMessage, PluginError as WitPluginError,
};

/// Interface names the host requires, for load-time error messages.
pub(crate) const POST_PROCESS_EXPORT: &str = "pipehost:plugin/post-process@0.1.0";
pub(crate) const PROMPT_BUILD_EXPORT: &str = "pipehost:plugin/prompt-build@0.1.0";
