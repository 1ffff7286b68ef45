//! The model-server simulator as a process, for the demo and benchmarks:
//! `modelsim [--addr 127.0.0.1:8000] [--tps N | --itl-us N] [--ttft-ms N] [--model NAME] [--workers N]`.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use sluice_tests::modelsim::{ModelSim, SimConfig};

fn main() -> Result<()> {
    let mut config = SimConfig {
        addr: "127.0.0.1:8000".parse()?,
        workers: 2,
        // Nothing reads them from outside the process.
        keep_records: false,
        ..SimConfig::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => config.addr = value.parse().context("--addr")?,
            "--tps" => config.tokens_per_second = value.parse().context("--tps")?,
            // Inter-token latency: the bench's pacing unit (0: as fast as the client reads).
            "--itl-us" => {
                let us: u64 = value.parse().context("--itl-us")?;
                config.tokens_per_second = if us == 0 { 0.0 } else { 1e6 / us as f64 };
            }
            "--ttft-ms" => config.ttft = Duration::from_millis(value.parse().context("--ttft-ms")?),
            "--model" => config.model = value,
            "--workers" => config.workers = value.parse().context("--workers")?,
            other => bail!("unknown flag {other}"),
        }
    }
    let sim = ModelSim::start(config);
    println!("modelsim listening on {}", sim.addr());
    // Serve until killed.
    loop {
        std::thread::park();
    }
}
