"""The DAG side: event datasets, requests and leases, sources, the dispatcher, and the node that ties them."""
