//! `kubectl mtls`: the kubectl plugin (see `mtls_operator::cli`). On PATH as `kubectl-mtls`,
//! kubectl runs it for `kubectl mtls ...`. Install: `cargo install --locked --path . --bin kubectl-mtls`.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    std::process::exit(mtls_operator::cli::main(std::env::args_os().collect()).await);
}
