fn main() -> std::process::ExitCode {
    toparch::cli::main()
}
