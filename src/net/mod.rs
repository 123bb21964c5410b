//! The Linux layer: sockets, `SO_TIMESTAMPING`, control messages, NIC ioctls.
//! All `unsafe` of the project lives here and in the io_uring worker.
