//! Ringline's numeric inner loops, in a crate of their own so that debug builds compile them
//! optimized (the workspace's `[profile.dev.package.ringline-kernels]`): the test suite runs
//! the same kernels as a release build at a usable speed, without optimizing all of Ringline.

pub mod activation;
pub mod dense;
