//! Where the server's time, and its claims about it, come from.
