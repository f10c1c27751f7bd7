fn main() {
    eprintln!("deferred-ctl: not built yet");
    std::process::exit(1);
}
