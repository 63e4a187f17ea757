//! The `toparch` command line.

use crate::cost::{Convention, Profile};
use crate::error::{Error, Result};
use crate::graph::{compile, Graph};
use crate::report::json::profile_json;
use crate::report::table::{render_markdown, render_table};
use crate::report::Depth;
use crate::spec::{embedded_specs, load_embedded, load_file, parse_resolution, LoadedSpec};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Analyse TopFormer-family segmentation networks: exact params and FLOPs, a reference forward pass,
/// reports and FLOP budgets.
#[derive(Parser, Debug)]
#[command(name = "toparch", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the embedded specs.
    List,
    /// Count params and FLOPs per stage, block or layer.
    Profile(ProfileArgs),
    /// Print the layer graph as Graphviz DOT.
    Graph(SpecArgs),
}

/// Which network, at which input size.
#[derive(Args, Debug, Clone)]
pub struct SpecArgs {
    /// An embedded spec: tiny, small, base, base-cityscapes, tiny-imagenet… (see `toparch list`).
    #[arg(long, short = 'v', conflicts_with = "spec")]
    variant: Option<String>,
    /// A spec file (TOML); it may `extends` an embedded spec.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Input resolution: 512 or HxW such as 1024x2048. Defaults to the spec's first published resolution, else 512.
    #[arg(long, short = 'r')]
    res: Option<String>,
    /// Override the number of classes.
    #[arg(long)]
    classes: Option<usize>,
}

impl SpecArgs {
    /// Loads the spec, applies `--classes`, and compiles it at the chosen resolution.
    pub fn compile(&self) -> Result<(LoadedSpec, Graph)> {
        let mut loaded = match (&self.variant, &self.spec) {
            (_, Some(path)) => load_file(path)?,
            (Some(name), None) => load_embedded(name)?,
            (None, None) => return Err(Error::input("name a network with --variant NAME or --spec FILE")),
        };
        if let Some(classes) = self.classes {
            if classes == 0 {
                return Err(Error::input("--classes must be positive"));
            }
            loaded.spec.set_num_classes(classes);
        }
        let res = match (&self.res, loaded.spec.published.first()) {
            (Some(res), _) => res.clone(),
            (None, Some(p)) => p.res.clone(),
            (None, None) => "512".into(),
        };
        let (h, w) = parse_resolution(&res)?;
        let graph = compile(&loaded.spec, h, w).map_err(|e| Error::input(format!("{}: {e}", loaded.origin)))?;
        Ok((loaded, graph))
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Table,
    Json,
    Markdown,
}

#[derive(Args, Debug)]
struct ProfileArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Counting convention for the FLOPs column.
    #[arg(long, short = 'c', value_enum, default_value = "paper")]
    convention: Convention,
    /// Breakdown depth.
    #[arg(long, short = 'd', value_enum, default_value = "stage")]
    depth: Depth,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value = "table")]
    format: Format,
}

fn list() -> String {
    let mut out = String::new();
    for embedded in embedded_specs() {
        match load_embedded(embedded.name) {
            Ok(loaded) => out.push_str(&format!("{:<28} {}\n", embedded.name, loaded.spec.description)),
            Err(e) => out.push_str(&format!("{:<28} (invalid: {e})\n", embedded.name)),
        }
    }
    out
}

fn profile(args: &ProfileArgs) -> Result<String> {
    let (loaded, graph) = args.spec.compile()?;
    let profile = Profile::new(&graph, &loaded.spec)?;
    Ok(match args.format {
        Format::Table => render_table(&profile, args.convention, args.depth),
        Format::Markdown => render_markdown(&profile, args.convention, args.depth),
        Format::Json => profile_json(&profile, args.convention, args.depth),
    })
}

fn run(cli: Cli) -> Result<String> {
    match cli.command {
        Command::List => Ok(list()),
        Command::Profile(args) => profile(&args),
        Command::Graph(args) => Ok(args.compile()?.1.to_dot()),
    }
}

/// Parses the command line, runs it, prints the result; user errors exit with code 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
