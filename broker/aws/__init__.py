"""The AWS seam: client protocols and construction, error classification, the lean
client and the instrumentation every call passes through."""
