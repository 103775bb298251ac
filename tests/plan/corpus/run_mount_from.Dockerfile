FROM rust:1.80 AS chef
RUN cargo install cargo-chef
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json
FROM chef AS builder
RUN --mount=type=bind,from=planner,source=/recipe.json,target=/recipe.json \
    cargo chef cook --release --recipe-path /recipe.json
RUN --mount=type=bind,from=tensorlake/toolbox:1.0,source=/bin/tool,target=/tool /tool check
FROM debian:bookworm-slim
COPY --from=builder /target/release/app /usr/local/bin/app
