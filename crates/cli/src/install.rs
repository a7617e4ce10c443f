//! Installing shoal like a tool: `shoal completions SHELL` and `shoal man`.

use std::path::PathBuf;

use clap::CommandFactory;

use crate::error::CliError;

/// `shoal completions`
#[derive(clap::Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell: bash, zsh, fish (also elvish, powershell).
    shell: clap_complete::Shell,
}

/// `shoal man`
#[derive(clap::Args, Debug)]
pub(crate) struct ManArgs {
    /// Write shoal.1 and one page per command (shoal-index.1, ...) into DIR instead of
    /// printing shoal.1.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Prints the completion script for `args.shell` on stdout.
pub(crate) fn completions<C: CommandFactory>(args: &CompletionsArgs) -> Result<(), CliError> {
    let mut command = C::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "shoal", &mut script);
    write_stdout(&script)
}

/// Prints shoal(1), or writes every page into `--out DIR`.
pub(crate) fn man<C: CommandFactory>(args: &ManArgs) -> Result<(), CliError> {
    let command = C::command();
    match &args.out {
        Some(dir) => {
            crate::ensure_dir(dir)?;
            clap_mangen::generate_to(command, dir).map_err(|source| CliError::Io {
                what: format!("cannot write the man pages into {}", dir.display()),
                source,
            })?;
            crate::output::outln!("man pages written to {}", dir.display());
            Ok(())
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .map_err(|source| CliError::Io {
                    what: "cannot render the man page".into(),
                    source,
                })?;
            write_stdout(&page)
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let text = String::from_utf8_lossy(bytes);
    crate::output::out!("{text}");
    Ok(())
}
