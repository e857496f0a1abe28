//! `policyd-dist OUT_DIR`: policyd's man pages (section 8) and shell
//! completions, written from the clap definitions that `policyd --help`
//! prints, so that they never drift from the binary they ship with.
//! `./vm-tests/run deb` runs it while building the Debian package:
//!
//! * `OUT_DIR/man/policyd.8` and `policyd-<command>.8` for each command;
//! * `OUT_DIR/completions/` for bash (`policyd.bash`), zsh (`_policyd`)
//!   and fish (`policyd.fish`).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// Administration commands: policyd acts on the whole machine as root.
const SECTION: &str = "8";

fn main() -> Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: policyd-dist OUT_DIR (writes OUT_DIR/man and OUT_DIR/completions)")?
        .into();
    let pages = write_man_pages(&out.join("man"))?;
    let scripts = write_completions(&out.join("completions"))?;
    for path in pages.iter().chain(&scripts) {
        println!("{}", path.display());
    }
    Ok(())
}

/// policyd's clap command, with global options copied into each command
/// (as `policyd load --help` shows them).
fn command() -> clap::Command {
    let mut cmd = policyd::cli::Cli::command();
    cmd.build();
    cmd
}

/// `policyd.8`, then `policyd-<command>.8` per command; their paths.
fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = command();
    // Built, each command knows itself as `policyd-<command>` (the page's name) and
    // `policyd <command>` (its synopsis).
    let pages = std::iter::once(cmd.clone()).chain(
        cmd.get_subcommands()
            .filter(|s| s.get_name() != "help" && !s.is_hide_set())
            .cloned(),
    );
    let mut written = Vec::new();
    for page in pages {
        let man = clap_mangen::Man::new(page)
            .section(SECTION)
            .manual("policyd")
            .source(format!("policyd {}", env!("CARGO_PKG_VERSION")));
        let path = dir.join(man.get_filename());
        let mut text = Vec::new();
        man.render(&mut text)
            .with_context(|| format!("rendering {}", path.display()))?;
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// One completion script per shell Debian packages completions for.
fn write_completions(dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| {
            clap_complete::generate_to(shell, &mut command(), "policyd", dir)
                .with_context(|| format!("writing the {shell} completions into {}", dir.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_a_page_naming_each_of_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_man_pages(dir.path()).unwrap();
        let cmd = command();
        let mut expected = vec![dir.path().join("policyd.8")];
        for sub in cmd
            .get_subcommands()
            .filter(|s| s.get_name() != "help" && !s.is_hide_set())
        {
            let path = dir.path().join(format!("policyd-{}.8", sub.get_name()));
            let text = fs::read_to_string(&path).unwrap();
            assert!(text.starts_with(".ie") || text.contains(".TH"), "{text}");
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(long) = arg.get_long() {
                    // roff escapes the dashes: \-\-dry\-run.
                    let escaped = format!("\\-\\-{}", long.replace('-', "\\-"));
                    assert!(
                        text.contains(&escaped),
                        "{escaped} not in {}",
                        path.display()
                    );
                }
            }
            assert!(
                !text.contains("proc\\-root"),
                "a hidden option in {}",
                path.display()
            );
            expected.push(path);
        }
        assert_eq!(pages, expected);
        let main = fs::read_to_string(dir.path().join("policyd.8")).unwrap();
        assert!(main.contains(".TH policyd 8"), "{main}");
    }

    #[test]
    fn completions_know_the_commands_and_their_values() {
        let dir = tempfile::tempdir().unwrap();
        let scripts = write_completions(dir.path()).unwrap();
        let names: Vec<_> = scripts
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["policyd.bash", "_policyd", "policyd.fish"]);
        let bash = fs::read_to_string(&scripts[0]).unwrap();
        for command in ["load", "status", "list", "check", "explain"] {
            assert!(
                bash.contains(&format!("policyd__subcmd__{command}")),
                "{command}: {bash}"
            );
        }
        assert!(bash.contains("compgen -W \"text json\""), "{bash}");
        let fish = fs::read_to_string(&scripts[2]).unwrap();
        assert!(fish.contains("-l dry-run"), "{fish}");
    }
}
