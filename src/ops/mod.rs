//! The closed set of primitive ops a TopFormer graph is built from.

pub mod activation;
