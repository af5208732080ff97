//! Fleet tests: drive the docker-compose fleet (deploy/docker-compose.yml) from outside,
//! through its published loopback ports, under faults. `deploy/compose-test.sh` (`just
//! compose-test`) builds the images, brings the fleet up and runs this target with the
//! endpoints in `AIGW_FLEET_*`; without them every test returns at once with a message,
//! so `cargo test --workspace` stays fast. The tests share one fleet: they run one at a
//! time (a lock, and `--test-threads=1` from the script).

mod cases;
mod harness;
mod load;
