//! Streams that end badly: client abort, upstream reset, idle upstream, slow reader.
