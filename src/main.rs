//! The `compose-fleet` command line: parses arguments and hands over to `cli`.

fn main() -> std::process::ExitCode {
    compose_fleet::cli::main()
}
