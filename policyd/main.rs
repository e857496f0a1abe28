// Placeholder until the command line lands (see cli.rs / commands.rs).
fn main() {}
