//! Non-inference traffic: relayed byte for byte, HTTP/1.1 and h2c.
