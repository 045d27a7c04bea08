"""The protocol layer shared by clients and servers: codecs between inferstack's values
(keys, columns, event batches, inference requests) and the generated protobuf messages of
inferstack.proto, and the JSON form of values for the HTTP gateways and the CLI."""
