//! The peers' configurations, rendered into `target/bench/<peer>/`. Each is the plain reverse
//! proxy a user would write: keep-alive both sides, no caching, no logging per request, SSE
//! not buffered, and limits that let a 64 KiB body through without touching disk.

use std::{fmt::Write as _, net::SocketAddr, path::Path};

/// One listener per backend: requests to `listen` go to `upstream`.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub name: &'static str,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
}

/// nginx: `worker_processes 2` (one per core, what `auto` picks here), upstream keep-alive,
/// `proxy_buffering off` so streamed tokens are relayed as they come.
pub fn nginx(dir: &Path, routes: &[Route]) -> String {
    let d = dir.display();
    let mut s = format!(
        "# Written by `cargo xtask bench`.
worker_processes 2;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 8m;
    client_body_buffer_size 128k;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
"
    );
    for r in routes {
        let _ = write!(
            s,
            "    upstream {name} {{
        server {up};
        keepalive 256;
        keepalive_requests 10000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://{name};
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
            proxy_read_timeout 60s;
        }}
    }}
",
            name = r.name,
            up = r.upstream,
            listen = r.listen,
        );
    }
    s.push_str("}\n");
    s
}

/// HAProxy: HTTP mode, one thread per core (its default), keep-alive and connection reuse,
/// and `http-no-delay` (HAProxy's counterpart of nginx's `proxy_buffering off`: without it,
/// it holds small response chunks back for coalescing, which delays streamed tokens).
/// `maxconn` stays under half the file-descriptor limit, which HAProxy otherwise refuses.
pub fn haproxy(routes: &[Route]) -> String {
    let mut s = String::from(
        "# Written by `cargo xtask bench`.
global
    maxconn 8000
    nbthread 2
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 75s
    http-reuse always
    option http-no-delay
",
    );
    for r in routes {
        let _ = write!(
            s,
            "frontend {name}_in
    bind {listen}
    default_backend {name}
backend {name}
    server s1 {up}
",
            name = r.name,
            listen = r.listen,
            up = r.upstream,
        );
    }
    s
}

/// LiteLLM proxy: one model name per backend (`bench-fast`, `bench-paced`), OpenAI provider
/// pointed at the backend, no retries, no telemetry, no database.
pub fn litellm(models: &[(&str, SocketAddr)]) -> String {
    let mut s = String::from("# Written by `cargo xtask bench`.\nmodel_list:\n");
    for (model, upstream) in models {
        let _ = write!(
            s,
            "  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: http://{upstream}/v1
      api_key: sk-bench-placeholder
",
        );
    }
    s.push_str(
        "litellm_settings:
  telemetry: false
  num_retries: 0
  request_timeout: 60
  drop_params: true
",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Vec<Route> {
        vec![
            Route {
                name: "fast",
                listen: "127.0.0.1:41000".parse().unwrap(),
                upstream: "127.0.0.2:42000".parse().unwrap(),
            },
            Route {
                name: "paced",
                listen: "127.0.0.1:41001".parse().unwrap(),
                upstream: "127.0.0.2:42001".parse().unwrap(),
            },
        ]
    }

    fn balanced(s: &str) -> bool {
        s.matches('{').count() == s.matches('}').count()
    }

    #[test]
    fn nginx_routes_each_listener_to_its_upstream() {
        let conf = nginx(Path::new("/b/nginx"), &routes());
        assert!(balanced(&conf), "{conf}");
        assert!(conf.contains("listen 127.0.0.1:41000;"));
        assert!(conf.contains("upstream fast {\n        server 127.0.0.2:42000;"));
        assert!(conf.contains("proxy_pass http://paced;"));
        assert!(conf.contains("proxy_buffering off;"));
        assert!(conf.contains("pid /b/nginx/nginx.pid;"));
        assert!(!conf.contains("0.0.0.0") && !conf.contains("listen 80"));
    }

    #[test]
    fn haproxy_routes_each_frontend_to_its_backend() {
        let conf = haproxy(&routes());
        assert!(
            conf.contains("frontend fast_in\n    bind 127.0.0.1:41000\n    default_backend fast\n")
        );
        assert!(conf.contains("backend paced\n    server s1 127.0.0.2:42001\n"));
        assert!(conf.contains("option http-no-delay"));
    }

    #[test]
    fn litellm_names_one_model_per_backend() {
        let conf = litellm(&[
            ("bench-fast", "127.0.0.2:42000".parse().unwrap()),
            ("bench-paced", "127.0.0.2:42001".parse().unwrap()),
        ]);
        assert!(conf.contains("  - model_name: bench-fast\n    litellm_params:\n      model: openai/bench-fast\n      api_base: http://127.0.0.2:42000/v1\n"));
        assert!(conf.contains("api_base: http://127.0.0.2:42001/v1"));
        assert!(conf.contains("telemetry: false"));
    }
}
