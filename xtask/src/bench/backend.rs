//! The model-server backend every path ends at. The bench knows it only as a command line
//! that starts an OpenAI-compatible server on a given address with a given token pacing, so
//! another backend is a change of [`BACKEND`] alone.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::Result;

use super::{plan::Pacing, procs::Proc};

/// A backend command line: `{bin}` is `target/release/<binary>`; `{addr}`, `{ttft_ms}` and
/// `{itl_us}` are filled in per instance.
pub struct BackendCommand {
    pub binary: &'static str,
    pub args: &'static [&'static str],
}

/// The vLLM-compatible simulator (`tests/src/modelsim.rs`).
pub const BACKEND: BackendCommand = BackendCommand {
    binary: "modelsim",
    args: &[
        "--addr",
        "{addr}",
        "--ttft-ms",
        "{ttft_ms}",
        "--itl-us",
        "{itl_us}",
    ],
};

// === impl BackendCommand ===

impl BackendCommand {
    /// The arguments for one instance.
    pub fn render(&self, addr: SocketAddr, pacing: Pacing) -> Vec<String> {
        self.args
            .iter()
            .map(|a| {
                a.replace("{addr}", &addr.to_string())
                    .replace("{ttft_ms}", &pacing.ttft.as_millis().to_string())
                    .replace("{itl_us}", &pacing.itl.as_micros().to_string())
            })
            .collect()
    }

    /// Starts an instance and waits until it accepts connections.
    pub fn start(
        &self,
        name: &str,
        bin_dir: &Path,
        addr: SocketAddr,
        pacing: Pacing,
        logs: &Path,
    ) -> Result<Proc> {
        let mut cmd = Command::new(bin_dir.join(self.binary));
        cmd.args(self.render(addr, pacing));
        let mut proc = Proc::spawn(name, cmd, logs)?;
        proc.wait_for_port(addr, Duration::from_secs(10))?;
        Ok(proc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled() {
        let pacing = Pacing {
            ttft: Duration::from_millis(20),
            itl: Duration::from_millis(8),
        };
        let args = BACKEND.render("127.0.0.2:8000".parse().unwrap(), pacing);
        let line = args.join(" ");
        assert!(line.contains("127.0.0.2:8000"), "{line}");
        assert!(!line.contains('{'), "unfilled placeholder: {line}");
        assert_eq!(
            line, "--addr 127.0.0.2:8000 --ttft-ms 20 --itl-us 8000",
            "modelsim's flags"
        );
    }
}
