// Recipe: a blocking worker that appends records to a file.
//
// The worker runs on a plain thread (pm::make_blocking_runnable) and writes
// with blocking write(2) + fsync(2). Two promises:
//
//  - A stop never tears a record: the worker looks at its stop token only
//    between records, so a shutdown that arrives mid-write lets the write
//    finish, and the file ends with a whole line.
//  - A worker that hangs (a write that never returns) cannot hang the
//    program: past its shutdown_timeout the manager abandons the thread,
//    reports it by name, and the stop completes.
//
//   file_writer [path]     appends a record every 200 ms until Ctrl-C
//   file_writer --self-test  runs both cases and checks them (exit 0)
#include <processmanager/processmanager.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr int kChunks = 16;        // write(2) calls per record: a record takes a while to write
constexpr int kChunkBytes = 1024;  // payload bytes per call
constexpr int kHeaderBytes = 14;   // "record 000001 "
constexpr int kTrailerBytes = 12;  // " end 000001\n"
constexpr int kRecordBytes = kHeaderBytes + kChunks * kChunkBytes + kTrailerBytes;

/// What the worker shares with whoever watches it. `midway` is a test hook,
/// called on the worker's thread after the first chunk of each record.
struct Journal {
  std::string path;
  std::chrono::milliseconds pace{200};
  std::function<void(int record, const pm::BlockingContext&)> midway;
  std::atomic<int> written{0};  // records whole on disk, as the worker counts them
  std::promise<void> returned;  // set as the worker's last act (of its one run)
};

void write_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::system_error(errno, std::generic_category(), "write");
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
}

/// One record: one line, written in pieces, then made durable. Nothing here
/// looks at the stop token: once begun, a record is finished.
void write_record(int fd, int seq, Journal& journal, const pm::BlockingContext& ctx) {
  char edge[32];
  std::snprintf(edge, sizeof edge, "record %06d ", seq);
  write_all(fd, edge);
  const std::string chunk(kChunkBytes, static_cast<char>('a' + seq % 26));
  for (int i = 0; i < kChunks; ++i) {
    write_all(fd, chunk);
    if (i == 0 && journal.midway) journal.midway(seq, ctx);
  }
  std::snprintf(edge, sizeof edge, " end %06d\n", seq);
  write_all(fd, edge);
  if (::fsync(fd) != 0) throw std::system_error(errno, std::generic_category(), "fsync");
}

/// The service's body, on its own thread.
void run_writer(pm::BlockingContext& ctx, Journal& journal) {
  const int fd = ::open(journal.path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), std::string("open ").append(journal.path));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  // The stop token is read between records only; wait_for() wakes at once
  // on a stop or a message, so the pace never delays a shutdown.
  while (!ctx.stop_requested()) {
    write_record(fd, journal.written + 1, journal, ctx);
    ++journal.written;
    ctx.heartbeat();
    ctx.wait_for(journal.pace);
    while (auto msg = ctx.next_control(0ms)) {
      // A reload could reopen the file here (log rotation); shutdown has
      // already requested the stop token.
    }
  }
}

std::shared_ptr<pm::Runnable> file_writer(std::shared_ptr<Journal> journal) {
  return pm::make_blocking_runnable("file-writer", [journal](pm::BlockingContext& ctx) {
    struct Returned {  // also when the body throws
      Journal& j;
      ~Returned() { j.returned.set_value(); }
    } returned{*journal};
    run_writer(ctx, *journal);
  });
}

// ---------------------------------------------------------------- self-test

/// The records in `path`: their count if every line is a whole record in
/// sequence from 1, else -1 (`why` says what is wrong).
int count_records(const std::string& path, std::string& why) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream all;
  all << in.rdbuf();
  const std::string text = all.str();
  if (text.size() % kRecordBytes != 0) {
    why = std::string("size ").append(std::to_string(text.size())).append(" is not a whole number of records");
    return -1;
  }
  const int count = static_cast<int>(text.size() / kRecordBytes);
  for (int i = 0; i < count; ++i) {
    const std::string_view rec(text.data() + static_cast<std::size_t>(i) * kRecordBytes, kRecordBytes);
    char head[32];
    char tail[32];
    std::snprintf(head, sizeof head, "record %06d ", i + 1);
    std::snprintf(tail, sizeof tail, " end %06d\n", i + 1);
    if (!rec.starts_with(head) || !rec.ends_with(tail)) {
      why = std::string("record ").append(std::to_string(i + 1)).append(" is torn or out of order");
      return -1;
    }
  }
  return count;
}

struct Outcome {
  int exit_code = -1;
  std::chrono::milliseconds stop_took{};
  std::vector<std::string> abandoned;  // paths the manager reported as abandoned
};

/// Runs a tree "files" holding the writer on two io threads; once the
/// worker says a write has begun (`begun`), asks the tree to stop and times
/// the stop.
Outcome run_until_midway(const std::shared_ptr<Journal>& journal, std::chrono::milliseconds shutdown_timeout,
                         std::future<void> begun) {
  Outcome out;
  std::mutex mu;
  auto root = pm::ProcessManagerBuilder()
                  .name("files")
                  .on_event([&](const pm::Event& e) {
                    // A blocking thread left behind ends its run with
                    // AbandonedError; the manager counts it as not stopped.
                    try {
                      if (e.cause) std::rethrow_exception(e.cause);
                    } catch (const pm::AbandonedError&) {
                      std::lock_guard lock(mu);
                      out.abandoned.push_back(e.path);
                    } catch (...) {
                    }
                  })
                  .pre_insert(file_writer(journal), {.shutdown_timeout = shutdown_timeout})
                  .build();
  std::thread io([&] { out.exit_code = pm::run(root, {.threads = 2, .handle_signals = false}); });
  const bool in_write = begun.wait_for(10s) == std::future_status::ready;  // a guard only
  const auto asked = std::chrono::steady_clock::now();
  root->process_handle()->request_shutdown();
  io.join();
  out.stop_took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - asked);
  if (!in_write) out.exit_code = -2;
  std::lock_guard lock(mu);
  return out;
}

int fail(const std::string& what) {
  std::printf("self-test: FAILED: %s\n", what.c_str());
  return 1;
}

int self_test() {
  char dir_template[] = "/tmp/pm-file-writer-XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) return fail("mkdtemp");
  const std::filesystem::path dir(dir_template);
  struct Cleanup {
    std::filesystem::path d;
    ~Cleanup() { std::filesystem::remove_all(d); }
  } cleanup{dir};

  // (a) Shutdown during a write. Record 3 pauses after its first chunk until
  // the stop has been requested, so the stop provably lands mid-record.
  {
    auto journal = std::make_shared<Journal>();
    journal->path = (dir / "a.log").string();
    journal->pace = 0ms;
    std::promise<void> begun;
    journal->midway = [&begun](int record, const pm::BlockingContext& ctx) {
      if (record != 3) return;
      begun.set_value();
      std::mutex m;
      std::condition_variable_any cv;
      std::unique_lock lock(m);
      cv.wait(lock, ctx.stop_token(), [] { return false; });  // returns once stop is requested
    };
    auto returned = journal->returned.get_future();
    const Outcome out = run_until_midway(journal, 10s, begun.get_future());
    if (out.exit_code != 0) return fail(std::string("(a) exit code ").append(std::to_string(out.exit_code)));
    if (returned.wait_for(0s) != std::future_status::ready) return fail("(a) the worker had not returned");
    std::string why;
    const int on_disk = count_records(journal->path, why);
    if (on_disk < 0) return fail(std::string("(a) ").append(why));
    if (on_disk != 3 || journal->written != 3) {
      return fail(std::string("(a) ")
                      .append(std::to_string(on_disk))
                      .append(" records on disk, worker reported ")
                      .append(std::to_string(journal->written.load()))
                      .append(", expected 3"));
    }
    if (!out.abandoned.empty()) return fail("(a) the worker was abandoned");
    std::printf(
        "self-test: (a) stop during record 3: file ends with a whole record, 3 on disk = 3 reported, "
        "stop took %lld ms, exit %d\n",
        static_cast<long long>(out.stop_took.count()), out.exit_code);
  }

  // (b) A write that never returns: record 2 blocks on a gate that
  // shutdown does not open (a hung NFS server, a full pipe).
  {
    constexpr auto timeout = 300ms;
    auto journal = std::make_shared<Journal>();
    journal->path = (dir / "b.log").string();
    journal->pace = 0ms;
    std::promise<void> begun;
    std::promise<void> gate;
    std::shared_future<void> opened = gate.get_future().share();
    journal->midway = [&begun, opened](int record, const pm::BlockingContext&) {
      if (record != 2) return;
      begun.set_value();
      opened.wait();
    };
    auto returned = journal->returned.get_future();
    const Outcome out = run_until_midway(journal, timeout, begun.get_future());
    const bool still_hung = returned.wait_for(0s) != std::future_status::ready;
    // Abandoned is not killed: the thread is still inside record 2, which
    // stays torn for as long as it hangs (and for good if the process ends).
    std::error_code size_error;
    const auto size_at_stop = std::filesystem::file_size(journal->path, size_error);
    gate.set_value();  // let the left-behind thread finish, so the test ends with no thread running
    if (returned.wait_for(10s) != std::future_status::ready) return fail("(b) the released worker did not return");
    if (out.exit_code != 0) return fail(std::string("(b) exit code ").append(std::to_string(out.exit_code)));
    if (!still_hung) return fail("(b) the worker was not hung when the stop completed");
    if (out.stop_took < timeout || out.stop_took > timeout + 2s) {
      return fail(std::string("(b) the stop took ").append(std::to_string(out.stop_took.count())).append(" ms"));
    }
    if (out.abandoned != std::vector<std::string>{"files/file-writer"}) {
      return fail(std::string("(b) abandoned: ").append(out.abandoned.empty() ? "none" : out.abandoned.front()));
    }
    if (size_error || size_at_stop != kRecordBytes + kHeaderBytes + kChunkBytes) {
      return fail(std::string("(b) at the stop the file held ").append(std::to_string(size_at_stop)).append(" bytes"));
    }
    std::string why;
    const int on_disk = count_records(journal->path, why);
    if (on_disk != 2 || journal->written != 2) return fail(std::string("(b) records: ").append(why));
    std::printf("self-test: (b) hung worker abandoned: %s, stop took %lld ms (bound %lld..%lld ms), exit %d\n",
                out.abandoned.front().c_str(), static_cast<long long>(out.stop_took.count()),
                static_cast<long long>(timeout.count()), static_cast<long long>((timeout + 2s).count()), out.exit_code);
  }
  std::printf("self-test: (b) record 2 was half-written while abandoned, whole once the thread was released\n");
  std::printf("self-test: file_writer passed, exit 0\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string_view arg = argc > 1 ? argv[1] : "";
  if (arg == "--self-test") return self_test();
  if (arg.starts_with("-")) {
    std::fprintf(stderr, "usage: file_writer [path] | --self-test\n");
    return 2;
  }
  auto journal = std::make_shared<Journal>();
  journal->path = arg.empty() ? "file_writer.log" : std::string(arg);
  auto root =
      pm::ProcessManagerBuilder().name("files").pre_insert(file_writer(journal), {.shutdown_timeout = 5s}).build();
  const int code = pm::run(root, {.threads = 2});  // Ctrl-C: the current record is finished, then exit 0
  std::printf("file_writer: %d records in %s, exit %d\n", journal->written.load(), journal->path.c_str(), code);
  return code;
}
