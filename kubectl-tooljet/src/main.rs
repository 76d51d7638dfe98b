//! `kubectl tooljet`: the tooljet-operator lifecycle from kubectl — status, promote, release,
//! rollback, history, approve, diff, import/export of ToolJet app exports, doctor.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use kubectl_tooljet::{
    cluster::{Cluster, ConnectionArgs},
    dashboard, diff, doctor,
    error::{self, Error, Result},
    history, lifecycle,
    output::Format,
    status, transfer, transfer_cmd,
};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  usage or input error (bad flags, unreadable file, nothing to roll back to)
  2  refused by the cluster: admission webhook, admission policy, schema rule or RBAC
     (the refusal's own message is printed)
  3  not found (app, version, stage configuration, CRDs)
  4  API or connection error
  5  doctor: at least one check failed";

/// kubectl plugin for tooljet-operator: ToolJet apps, versions and environments.
#[derive(Parser, Debug)]
#[command(name = "kubectl tooljet", bin_name = "kubectl-tooljet", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Output format for commands that print data.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A board per app: the pipeline, the versions in each stage, the release, readiness and
    /// missing requirements.
    Status {
        /// One app (default: every app of the namespace, or of every namespace with -A).
        app: Option<String>,
    },
    /// Promote a version to the next stage (or --to STAGE), as the webhook allows.
    Promote {
        version: String,
        /// The target stage (default: the stage after the version's current one).
        #[arg(long)]
        to: Option<String>,
        /// Ask the apiserver (server-side dry run: RBAC, webhook, policies) without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Release a version of the last stage to end users.
    Release {
        version: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Release an earlier version again (default: the previous release still in the last stage).
    Rollback {
        /// The app (default: the namespace's only app).
        app: Option<String>,
        /// The version to go back to.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Promotions and releases of an app or a version: who, when, from, to.
    History {
        /// An app, or a version (an app of that name wins).
        name: String,
    },
    /// Approve a version for a stage (creates an Approval; needs the Approval kind).
    Approve {
        version: String,
        /// The stage the approval is for.
        #[arg(long)]
        to: String,
        #[arg(long)]
        comment: Option<String>,
        /// The version's metadata.generation you reviewed (`kubectl tooljet status` shows it); the
        /// webhook refuses the approval if the version has changed since. Default: the
        /// generation read now, which the command prints.
        #[arg(long)]
        generation: Option<i64>,
    },
    /// Data sources and constants of two stages: only in one, differing, same (names and hashes,
    /// never values).
    Diff {
        stage_a: String,
        stage_b: String,
        /// Compare what this app's versions get (workspace-wide entries overridden by the app's);
        /// default: the workspace-wide configurations.
        #[arg(long)]
        app: Option<String>,
    },
    /// Turn a ToolJet app export (JSON) into a ToolJetApp, an AppVersion and EnvironmentConfigs:
    /// printed as YAML (default) or JSON, or applied with --apply.
    Import {
        /// The export file ("-" for stdin).
        file: String,
        /// The ToolJetApp's name (default: the app's name as a DNS label).
        #[arg(long)]
        app: Option<String>,
        /// The AppVersion's name (default: <app>-<version name>).
        #[arg(long)]
        version: Option<String>,
        /// Server-side apply the objects (through the admission webhook) instead of printing them.
        #[arg(long)]
        apply: bool,
    },
    /// Write a version as a ToolJet app export (JSON on stdout), with a stage's data source options.
    Export {
        version: String,
        /// The stage whose options to export (default: the version's stage).
        #[arg(long)]
        environment: Option<String>,
    },
    /// Check the installation: CRDs, webhook configurations and caBundle, the operator, the
    /// admission policies, and your own verbs.
    Doctor {
        /// Where the operator's Deployment runs.
        #[arg(long, default_value = "tooljet-system")]
        operator_namespace: String,
    },
    /// Serve a web dashboard for people who do not use kubectl (QA, product managers): boards,
    /// version pages, the freeze calendar, live updates; approve, promote, release and roll back,
    /// each as one API call with your own credentials.
    Dashboard {
        #[command(flatten)]
        options: dashboard::Options,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
}

async fn run(cli: Cli) -> Result<()> {
    let format = cli.output;
    let connect = || Cluster::connect(&cli.connection);
    match cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "kubectl-tooljet",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Import {
            file,
            app,
            version,
            apply,
        } => {
            transfer_cmd::import(
                &cli.connection,
                &file,
                transfer::ImportOptions { app, version },
                apply,
                format,
            )
            .await
        }
        Command::Status { app } => status::run(&connect().await?, app.as_deref(), format).await,
        Command::Promote {
            version,
            to,
            dry_run,
        } => {
            let done = lifecycle::promote(&connect().await?, &version, to, dry_run).await?;
            lifecycle::report(format, &done)
        }
        Command::Release { version, dry_run } => {
            let done = lifecycle::release(&connect().await?, &version, dry_run, None).await?;
            lifecycle::report(format, &done)
        }
        Command::Rollback { app, to, dry_run } => {
            let cluster = connect().await?;
            let done = lifecycle::rollback(&cluster, app.as_deref(), to, dry_run, None).await?;
            lifecycle::report(format, &done)
        }
        Command::History { name } => history::run(&connect().await?, &name, format).await,
        Command::Approve {
            version,
            to,
            comment,
            generation,
        } => {
            let cluster = connect().await?;
            let done = lifecycle::approve(&cluster, &version, &to, comment, generation).await?;
            lifecycle::report(format, &done)
        }
        Command::Diff {
            stage_a,
            stage_b,
            app,
        } => {
            diff::run(
                &connect().await?,
                &stage_a,
                &stage_b,
                app.as_deref(),
                format,
            )
            .await
        }
        Command::Export {
            version,
            environment,
        } => transfer_cmd::export(&connect().await?, &version, environment).await,
        Command::Dashboard { options } => dashboard::run(&cli.connection, options).await,
        Command::Doctor { operator_namespace } => {
            doctor::run(&connect().await?, &operator_namespace, format).await
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                error::exit::USAGE
            } else {
                error::exit::OK
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(error::exit::API);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::from(error::exit::OK),
        Err(Error::ChecksFailed) => ExitCode::from(error::exit::CHECKS_FAILED),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
