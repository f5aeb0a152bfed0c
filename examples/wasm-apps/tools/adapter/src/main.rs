//! Usage: write-adapters OUT_DIR — writes reactor.wasm and command.wasm.
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("reactor.wasm"),
        wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    )?;
    std::fs::write(
        out.join("command.wasm"),
        wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    )?;
    Ok(())
}
