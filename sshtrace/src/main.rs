//! The sshtrace binary: everything is in the library, whose modules are private to it so that
//! the compiler sees what is unused.

fn main() -> std::process::ExitCode {
    sshtrace::main()
}
