// A KvStore in a directory (several processes on one host, or a shared filesystem): one file per
// key, written to a temporary name and renamed into place so that a reader never sees half a
// value. Get polls for the file, backing off from 1 ms to 20 ms, until the timeout.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/communicator.h"

namespace rs::par {
namespace {

// Keys may hold '/' and other characters; keep [A-Za-z0-9._-] and write the rest as %XX.
std::string EscapeKey(const std::string& key) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : key) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || (c == '.' && !out.empty())) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  if (out.empty()) out = "%";
  return out;
}

absl::Status MakeDirs(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    const std::string part = dir.substr(0, pos);
    if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST)
      return absl::UnavailableError(
          absl::StrCat("file store: cannot create directory '", part, "': ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

class FileKvStore : public KvStore {
 public:
  explicit FileKvStore(std::string dir) : dir_(std::move(dir)) {}

  absl::Status Set(const std::string& key, const std::vector<char>& value) override {
    if (absl::Status s = MakeDirs(dir_); !s.ok()) return s;
    const std::string path = Path(key);
    const std::string tmp =
        absl::StrCat(dir_, "/.tmp.", ::getpid(), ".", counter_.fetch_add(1), ".", EscapeKey(key));
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
      return absl::UnavailableError(
          absl::StrCat("file store: cannot create '", tmp, "': ", std::strerror(errno)));
    size_t done = 0;
    while (done < value.size()) {
      ssize_t n = ::write(fd, value.data() + done, value.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int err = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        return absl::UnavailableError(absl::StrCat("file store: writing ", value.size(),
                                                   " bytes to '", tmp, "' failed after ", done,
                                                   ": ", std::strerror(err)));
      }
      done += static_cast<size_t>(n);
    }
    ::close(fd);
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      return absl::UnavailableError(absl::StrCat("file store: rename '", tmp, "' to '", path,
                                                 "' failed: ", std::strerror(err)));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<char>> Get(const std::string& key,
                                        std::chrono::milliseconds timeout) override {
    const std::string path = Path(key);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::milliseconds(1);
    for (;;) {
      int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        std::vector<char> out;
        char buf[4096];
        for (;;) {
          ssize_t n = ::read(fd, buf, sizeof(buf));
          if (n < 0 && errno == EINTR) continue;
          if (n < 0) {
            const int err = errno;
            ::close(fd);
            return absl::UnavailableError(
                absl::StrCat("file store: reading '", path, "' failed: ", std::strerror(err)));
          }
          if (n == 0) break;
          out.insert(out.end(), buf, buf + n);
        }
        ::close(fd);
        return out;
      }
      if (errno != ENOENT)
        return absl::UnavailableError(
            absl::StrCat("file store: cannot open '", path, "': ", std::strerror(errno)));
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline)
        return absl::DeadlineExceededError(absl::StrCat("rendezvous key '", key,
                                                        "' not set within ", timeout.count(),
                                                        " ms (file store '", dir_, "')"));
      std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
          pause, deadline - now));
      pause = std::min(pause * 2, std::chrono::milliseconds(20));
    }
  }

 private:
  std::string Path(const std::string& key) const { return absl::StrCat(dir_, "/", EscapeKey(key)); }

  std::string dir_;
  std::atomic<uint64_t> counter_{0};
};

}  // namespace

std::unique_ptr<KvStore> MakeFileKvStore(const std::string& dir) {
  return std::make_unique<FileKvStore>(dir.empty() ? std::string(".") : dir);
}

}  // namespace rs::par
