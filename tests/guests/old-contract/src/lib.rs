//! Test component: an echo post-processor built against `pipehost:plugin@0.0.9` (a copy of
//! `wit/plugin.wit` with only the package version changed, in this crate's `wit/`), with
//! bindings generated here by `wit-bindgen` rather than through the SDK. It exports
//! `pipehost:plugin/post-process@0.0.9` (and imports nothing from the host interface, which it
//! does not use).
//!
//! The host must refuse to load it, with a message naming the version mismatch
//! (0.0.9 vs the host's 0.1.0). Natively this crate is empty.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        world: "post-processor",
        path: "wit",
    });

    use exports::pipehost::plugin::post_process::{Guest, GuestStreamer, Streamer};
    use pipehost::plugin::types::{ChunkOutput, Context, PluginError};

    struct OldContract;

    impl Guest for OldContract {
        type Streamer = Echo;

        fn validate_config(_config: String) -> Result<(), PluginError> {
            Ok(())
        }

        fn process(text: String, _ctx: Context, _config: String) -> Result<String, PluginError> {
            Ok(text)
        }
    }

    struct Echo;

    impl GuestStreamer for Echo {
        fn open(_config: String, _ctx: Context) -> Result<Streamer, PluginError> {
            Ok(Streamer::new(Echo))
        }

        fn push(&self, chunk: String) -> Result<ChunkOutput, PluginError> {
            Ok(ChunkOutput { emit: chunk, stop: false })
        }

        fn finish(&self) -> Result<String, PluginError> {
            Ok(String::new())
        }
    }

    export!(OldContract);
}
