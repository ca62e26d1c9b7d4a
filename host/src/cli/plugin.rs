//! `pipehost plugin ...`: run a post-processor by hand, scaffold a new plugin.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::plugin::{
    CallContext, Limits, PluginRuntime, PostProcessor, RuntimeConfig, default_plugins_dir, plugin_path,
};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run one post-processor on a text and print the result.
    ///
    /// Examples:
    ///   pipehost plugin run dedupe --input "你好。你好。"
    ///   echo "the the the end" | pipehost plugin run dedupe --config '{"max_repeat":1}'
    ///   pipehost plugin run ./my.wasm --input "..." --stream-chunk 3
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
    /// Scaffold a new plugin crate that builds and passes its own tests as generated.
    New(NewArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A plugin name (looked up as NAME.wasm in the plugins folder) or a path to a .wasm file.
    plugin: String,
    /// The plugins folder [default: $PIPEHOST_PLUGINS_DIR, else ./plugins/dist].
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// The stage config as JSON (what a pipeline's `config:` block becomes).
    #[arg(long, value_name = "JSON", default_value = "{}")]
    config: String,
    /// The text to process [default: read from stdin].
    #[arg(long, value_name = "TEXT")]
    input: Option<String>,
    /// Feed the input through the streaming interface in chunks of N characters.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    stream_chunk: Option<u64>,
    /// Deadline per call in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = Limits::default().time_ms)]
    time_ms: u64,
    /// Linear-memory cap in MiB [default: the plugin language's, 64 for Rust, 128 for Python
    /// and JavaScript].
    #[arg(long, value_name = "MIB")]
    memory_mib: Option<usize>,
    /// Don't read or write the compiled-component cache.
    #[arg(long)]
    no_cache: bool,
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// Plugin name: lowercase letters, digits, '-' and '_'.
    name: String,
    /// Folder to create the crate in [default: ./plugins/NAME].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The SDK to use outside the Pipehost tree: plugins/sdk (Rust), plugins/sdk-python or
    /// plugins/sdk-js [default: the one in the source tree this binary was built from].
    #[arg(long, value_name = "DIR")]
    sdk: Option<PathBuf>,
    /// The plugin's language.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

pub fn run(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCommand::Run(args) => run_plugin(args),
        PluginCommand::New(args) => new_plugin(args),
    }
}

fn run_plugin(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (name, path) = locate(&args.plugin, args.plugins.as_deref())?;
    let mut config = RuntimeConfig::default();
    if args.no_cache {
        config.cache_dir = None;
    }
    let runtime = PluginRuntime::new(&config)?;
    let plugin = runtime.load_post_processor(&name, &path)?;
    let defaults = plugin.meta().language.default_limits();
    let limits = Limits {
        time_ms: args.time_ms,
        memory_bytes: args.memory_mib.map_or(defaults.memory_bytes, |m| m << 20),
        ..defaults
    };
    limits.check().map_err(anyhow::Error::msg)?;
    let input = match args.input {
        Some(text) => text,
        None => read_stdin()?,
    };
    let ctx = CallContext { pipeline: "cli".into(), request_id: "cli".into(), stage: String::new() };
    let mut stdout = std::io::stdout().lock();
    let ends_with_newline = match args.stream_chunk {
        None => {
            let output = plugin.process(&input, &ctx, &args.config, &limits)?;
            stdout.write_all(output.as_bytes())?;
            output.ends_with('\n')
        }
        Some(n) => stream(&plugin, &input, n as usize, &ctx, &args.config, &limits, &mut stdout)?,
    };
    if !ends_with_newline && stdout.is_terminal() {
        writeln!(stdout)?;
    }
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Streams `input` in `chunk_chars`-character chunks, printing output as it is emitted.
/// Returns whether the output ended with a newline.
fn stream(
    plugin: &PostProcessor,
    input: &str,
    chunk_chars: usize,
    ctx: &CallContext,
    config: &str,
    limits: &Limits,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let mut session = plugin.open_stream(ctx, config, limits)?;
    let mut last = String::new();
    let chars: Vec<char> = input.chars().collect();
    for chunk in chars.chunks(chunk_chars) {
        let chunk: String = chunk.iter().collect();
        let pushed = session.push(&chunk)?;
        write_part(out, &pushed.emit, &mut last)?;
        if pushed.stop {
            tracing::info!(plugin = plugin.name(), "plugin asked to stop; remaining input not sent");
            break;
        }
    }
    let rest = session.finish()?;
    write_part(out, &rest, &mut last)?;
    Ok(last.ends_with('\n'))
}

fn write_part(out: &mut impl Write, text: &str, last: &mut String) -> anyhow::Result<()> {
    if !text.is_empty() {
        out.write_all(text.as_bytes())?;
        out.flush()?;
        last.clear();
        last.push_str(text);
    }
    Ok(())
}

/// Resolves `NAME` in the plugins folder, or takes a path to a .wasm file as it is.
fn locate(plugin: &str, dir: Option<&Path>) -> anyhow::Result<(String, PathBuf)> {
    let as_path = Path::new(plugin);
    if plugin.ends_with(".wasm") || plugin.contains(std::path::MAIN_SEPARATOR) {
        let name = as_path.file_stem().and_then(|s| s.to_str()).unwrap_or(plugin).to_owned();
        return Ok((name, as_path.to_owned()));
    }
    let dir = dir.map_or_else(default_plugins_dir, Path::to_owned);
    let path = plugin_path(&dir, plugin)?;
    if !path.exists() {
        bail!(
            "plugin `{plugin}`: no {} (build the plugins with scripts/build-plugins.sh, or pass --plugins DIR)",
            path.display()
        );
    }
    Ok((plugin.to_owned(), path))
}

fn read_stdin() -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).context("cannot read stdin")?;
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("stdin is not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()))
}

const TEMPLATE_LIB: &str = include_str!("templates/lib.rs.txt");
const TEMPLATE_PY: [(&str, &str); 3] = [
    ("plugin.py", include_str!("templates/plugin.py.txt")),
    ("pyproject.toml", include_str!("templates/pyproject.toml.txt")),
    ("tests/test_plugin.py", include_str!("templates/test_plugin.py.txt")),
];
const TEMPLATE_JS: [(&str, &str); 3] = [
    ("plugin.js", include_str!("templates/plugin.js.txt")),
    ("package.json", include_str!("templates/package.json.txt")),
    ("tests/plugin.test.js", include_str!("templates/plugin.test.js.txt")),
];

fn new_plugin(args: NewArgs) -> anyhow::Result<ExitCode> {
    crate::plugin::validate_plugin_name(&args.name).map_err(anyhow::Error::msg)?;
    if args.lang != Lang::Rust {
        return new_script_plugin(args);
    }
    let dir = args.dir.unwrap_or_else(|| Path::new("plugins").join(&args.name));
    if dir.exists() {
        bail!("{} already exists; choose another name or --dir", dir.display());
    }
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let in_workspace =
        find_pipehost_workspace(&dir).is_some_and(|root| dir.starts_with(root.join("plugins")));
    let manifest = if in_workspace {
        cargo_toml_in_workspace(&args.name)
    } else {
        let sdk = match args.sdk {
            Some(sdk) => sdk,
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk"),
        };
        let sdk = sdk.canonicalize().with_context(|| {
            format!("cannot find the plugin SDK at {}: pass --sdk PATH/TO/plugins/sdk", sdk.display())
        })?;
        cargo_toml_standalone(&args.name, &sdk)
    };
    let type_name = type_name(&args.name);
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    std::fs::write(
        dir.join("src/lib.rs"),
        TEMPLATE_LIB.replace("{{type}}", &type_name).replace("{{name}}", &args.name),
    )?;
    let build_cmd = if in_workspace {
        format!("cargo build --target wasm32-wasip2 --profile plugin -p {}", args.name)
    } else {
        format!("cd {} && cargo build --target wasm32-wasip2 --profile plugin", dir.display())
    };
    println!("Created plugin `{}` in {}", args.name, dir.display());
    println!("  test:   cargo test --manifest-path {}/Cargo.toml", dir.display());
    println!("  build:  {build_cmd}");
    println!(
        "  run:    pipehost plugin run <path to {}.wasm> --input \"hello\"",
        args.name.replace('-', "_")
    );
    println!("(or scripts/build-plugins.sh, which builds every plugin into plugins/dist/)");
    Ok(ExitCode::SUCCESS)
}

/// `plugin new --lang python|js`: a folder with plugin.py / plugin.js, its manifest and tests.
fn new_script_plugin(args: NewArgs) -> anyhow::Result<ExitCode> {
    let (templates, sdk_folder) = match args.lang {
        Lang::Python => (TEMPLATE_PY, "sdk-python"),
        Lang::Js => (TEMPLATE_JS, "sdk-js"),
        Lang::Rust => unreachable!("handled by new_plugin"),
    };
    let dir = args.dir.unwrap_or_else(|| Path::new("plugins").join(&args.name));
    if dir.exists() {
        bail!("{} already exists; choose another name or --dir", dir.display());
    }
    std::fs::create_dir_all(dir.join("tests")).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let root =
        find_pipehost_workspace(&dir).filter(|root| dir.parent() == Some(root.join("plugins").as_path()));
    // Inside the tree the SDK is a sibling folder; elsewhere an absolute path to it.
    let sdk = match (&root, args.sdk) {
        (Some(_), None) => format!("../{sdk_folder}"),
        (_, sdk) => {
            let sdk = sdk
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins").join(sdk_folder));
            let sdk = sdk.canonicalize().with_context(|| {
                format!(
                    "cannot find the plugin SDK at {}: pass --sdk PATH/TO/plugins/{sdk_folder}",
                    sdk.display()
                )
            })?;
            sdk.display().to_string()
        }
    };
    let type_name = type_name(&args.name);
    for (file, template) in templates {
        let text =
            template.replace("{{type}}", &type_name).replace("{{name}}", &args.name).replace("{{sdk}}", &sdk);
        std::fs::write(dir.join(file), text)?;
    }
    if let Some(root) = &root {
        // Not a cargo package: keep the workspace's `plugins/*` glob from picking it up.
        exclude_from_workspace(&root.join("Cargo.toml"), &format!("plugins/{}", args.name))?;
    }
    let (test, tool) = match args.lang {
        Lang::Python => {
            ("pytest", "target/py/venv/bin/python -m pytest (after scripts/build-plugins.sh), or any pytest")
        }
        _ => ("node --test tests/", "node 20 or newer"),
    };
    println!(
        "Created {} plugin `{}` in {}",
        if args.lang == Lang::Python { "Python" } else { "JavaScript" },
        args.name,
        dir.display()
    );
    println!("  test:   cd {} && {test}   ({tool})", dir.display());
    if root.is_some() {
        println!("  build:  scripts/build-plugins.sh {}    # -> plugins/dist/{}.wasm", args.name, args.name);
        println!("  run:    pipehost plugin run {} --input \"hello\"", args.name);
    } else {
        println!(
            "  build:  scripts/build-plugins.sh {}    # -> {}/{}.wasm (from the Pipehost tree)",
            dir.display(),
            dir.display(),
            args.name
        );
        println!("  run:    pipehost plugin run {}/{}.wasm --input \"hello\"", dir.display(), args.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// Adds `path` to the `exclude` list of the workspace manifest at `manifest`.
fn exclude_from_workspace(manifest: &Path, path: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(manifest)?;
    let entry = format!("\"{path}\"");
    if text.contains(&entry) {
        return Ok(());
    }
    let Some(at) = text.find("exclude = [") else {
        bail!("{}: no `exclude = [` in [workspace]; add {entry} to it by hand", manifest.display());
    };
    let insert = at + "exclude = [".len();
    let updated = format!("{}\n    {entry},{}", &text[..insert], &text[insert..]);
    std::fs::write(manifest, updated).with_context(|| format!("cannot update {}", manifest.display()))?;
    println!("Added {entry} to the workspace's exclude list in {}", manifest.display());
    Ok(())
}

fn type_name(name: &str) -> String {
    let camel: String = name
        .split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    if camel.starts_with(|c: char| c.is_ascii_digit()) { format!("Plugin{camel}") } else { camel }
}

/// The root of the Pipehost source tree containing `dir`, if any.
fn find_pipehost_workspace(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|a| {
            std::fs::read_to_string(a.join("Cargo.toml"))
                .is_ok_and(|s| s.contains("pipehost-plugin-sdk = { path"))
        })
        .map(Path::to_owned)
}

fn cargo_toml_in_workspace(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition.workspace = true
publish = false

[lib]
# cdylib: the WebAssembly component; rlib: native unit tests and benchmarks.
crate-type = ["cdylib", "rlib"]

[dependencies]
pipehost-plugin-sdk = {{ workspace = true }}
serde = {{ workspace = true }}

[dev-dependencies]
proptest = {{ workspace = true }}
"#
    )
}

fn cargo_toml_standalone(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the WebAssembly component; rlib: native unit tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
pipehost-plugin-sdk = {{ path = "{sdk}" }}
serde = {{ version = "1", features = ["derive"] }}

[dev-dependencies]
proptest = "1"

# A standalone crate, not part of another workspace.
[workspace]

[profile.plugin]
inherits = "release"
lto = true
codegen-units = 1
strip = true
panic = "abort"
"#,
        sdk = sdk.display()
    )
}
