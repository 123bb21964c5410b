//! Workers (one io_uring event loop each) and their statistics.
