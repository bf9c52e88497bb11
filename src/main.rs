fn main() -> std::process::ExitCode {
    referral_sync::cli::main()
}
