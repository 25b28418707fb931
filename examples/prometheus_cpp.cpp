// Metrics kept in prometheus-cpp (Debian's prometheus-cpp-dev), served from
// the HealthServer's /metrics beside the tree's own families: the hook
// appends prometheus-cpp's text as it is (MetricsWriter::raw checks it).
//
// The program starts a small tree, takes three orders, fetches its own
// /metrics over HTTP, prints the document and stops. The test suite pipes
// the document into Prometheus' own Python parser.
#include <processmanager/processmanager.hpp>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

namespace asio = pm::asio;
namespace http = boost::beast::http;

namespace {

/// GET http://127.0.0.1:<port><target>, blocking; the body.
std::string get(std::uint16_t port, const std::string& target) {
  asio::io_context io;
  asio::ip::tcp::socket socket(io);
  socket.connect({asio::ip::make_address("127.0.0.1"), port});
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, "127.0.0.1");
  http::write(socket, req);
  boost::beast::flat_buffer buffer;
  http::response<http::string_body> res;
  http::read(socket, buffer, res);
  return res.body();
}

}  // namespace

int main() {
  // The program's own metrics, in prometheus-cpp.
  auto registry = std::make_shared<prometheus::Registry>();
  auto& orders = prometheus::BuildCounter().Name("shop_orders_total").Help("Orders taken.").Register(*registry);
  auto& depth = prometheus::BuildGauge().Name("shop_queue_depth").Help("Orders waiting.").Register(*registry);
  orders.Add({{"queue", "inbound"}}).Increment(3);
  depth.Add({{"queue", "inbound"}}).Set(1);

  std::thread client;
  std::string document;
  std::shared_ptr<pm::ProcessManager> root;

  pm::HealthOptions options;
  options.metrics = [registry](pm::MetricsWriter& w) {
    w.raw(prometheus::TextSerializer().Serialize(registry->Collect()));
  };
  // Called on the server's executor: the fetch runs on a thread of its own.
  options.on_listening = [&client, &document, &root](std::uint16_t port) {
    client = std::thread([port, &document, &root] {
      if (root->wait_ready_blocking(std::chrono::seconds(20))) document = get(port, "/metrics");
      root->process_handle()->request_shutdown();
    });
  };
  root = pm::ProcessManagerBuilder()
             .name("shop")
             .pre_insert(std::make_shared<pm::IdleProcess>("orders"))
             .pre_insert_with(pm::health_server(options))
             .build();
  pm::set_log_level(pm::LogLevel::warn);
  const int code = pm::run(root, {.handle_signals = false});
  if (client.joinable()) client.join();
  std::cout << document << std::flush;
  const bool ok = code == 0 && document.find("shop_orders_total{queue=\"inbound\"} 3") != std::string::npos &&
                  document.find("processmanager_child_ready{path=\"shop/orders\"} 1") != std::string::npos;
  std::fprintf(stderr, "prometheus-cpp recipe: %s (exit code %d)\n", ok ? "ok" : "FAILED", code);
  return ok ? 0 : 1;
}
