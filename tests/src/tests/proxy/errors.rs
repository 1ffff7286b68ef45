//! Every error a client can act on, in OpenAI's shape, with the right status.
