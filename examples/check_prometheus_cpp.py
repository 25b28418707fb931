"""Reads prometheus_cpp's /metrics document from stdin with Prometheus' own
parser (Debian's python3-prometheus-client) and checks the families the
recipe serves: prometheus-cpp's beside the tree's own. Exits 1 otherwise."""
import sys

from prometheus_client.parser import text_string_to_metric_families

families = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
orders = [s for s in families["shop_orders"].samples if s.name == "shop_orders_total"]
assert len(orders) == 1 and orders[0].labels == {"queue": "inbound"} and orders[0].value == 3, orders
assert families["shop_queue_depth"].samples[0].value == 1, families["shop_queue_depth"]
ready = [s for s in families["processmanager_child_ready"].samples if s.labels["path"] == "shop/orders"]
assert len(ready) == 1 and ready[0].value == 1, ready
print("parsed", len(families), "families")
