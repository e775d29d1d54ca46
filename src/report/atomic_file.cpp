#include "kvbench/report/atomic_file.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "kvbench/core/error.h"

namespace kvbench {

namespace {
// The temporary file of the write in progress ("" when none), for a signal handler.
char g_unfinished[4096];

void set_unfinished(const std::string& tmp) {
  g_unfinished[0] = '\0';
  if (tmp.size() < sizeof(g_unfinished)) {
    std::memcpy(g_unfinished + 1, tmp.c_str() + 1, tmp.size());  // first byte last: whole or ""
    g_unfinished[0] = tmp[0];
  }
}
}  // namespace

void remove_unfinished_atomic_write() {
  if (g_unfinished[0] != '\0') ::unlink(g_unfinished);
}

bool unfinished_atomic_write_placed() {
  struct stat st {};
  return g_unfinished[0] != '\0' && ::stat(g_unfinished, &st) == 0 && st.st_nlink > 1;
}

bool write_file_atomically(const std::filesystem::path& path, const std::string& content,
                           bool exclusive, std::atomic<bool>* placed_flag) {
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  KVB_CHECK(!ec, "cannot create directory ", path.parent_path().string(), ": ", ec.message());
  // A name no other process holds (mkstemp creates it exclusively): pids repeat between
  // containers sharing an output directory, and two shards writing one report name at once
  // must not share a temporary (one truncating what the other had just linked in place).
  // The stop signals wait while it is created and named for their handler (which removes it),
  // so a stop between the two leaves no temporary the handler does not know.
  std::string name = path.string() + ".tmp.XXXXXX";
  sigset_t stops, before;
  sigemptyset(&stops);
  sigaddset(&stops, SIGINT);
  sigaddset(&stops, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stops, &before);
  int fd = ::mkostemp(name.data(), O_CLOEXEC);
  const int made_errno = errno;
  if (fd >= 0) set_unfinished(name);
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
  KVB_CHECK(fd >= 0, "cannot write ", name, ": ", std::strerror(made_errno));
  const std::string tmp = name;
  struct Done {
    ~Done() { g_unfinished[0] = '\0'; }
  } done_writing;
  // mkstemp's 0600 to what open(0644) gave before: 0644 less the umask.
  static const mode_t kMode = [] {
    const mode_t mask = ::umask(0);
    ::umask(mask);
    return static_cast<mode_t>(0644 & ~mask);
  }();
  (void)::fchmod(fd, kMode);  // (a file system that refuses it keeps mkstemp's 0600)
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n == 0 ? EIO : errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      KVB_CHECK(false, "cannot write ", tmp, ": ", std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  const int sync_errno = errno;
  ::close(fd);
  // link() fails with EEXIST where rename() would replace: the exclusive write's claim. A file
  // system without hard links gets a check then a rename (exclusive between processes only
  // where link works).
  bool placed = false;
  int err = sync_errno;
  if (synced && exclusive) {
    placed = ::link(tmp.c_str(), path.c_str()) == 0;
    err = errno;
    if (!placed && (err == EPERM || err == EOPNOTSUPP || err == ENOSYS)) {
      if (std::filesystem::exists(path)) {
        err = EEXIST;  // the name is taken, as link() would say: the caller tries the next one
      } else {
        placed = std::rename(tmp.c_str(), path.c_str()) == 0;
        err = errno;
        if (placed) exclusive = false;  // the temporary is gone
      }
    }
  } else if (synced) {
    placed = std::rename(tmp.c_str(), path.c_str()) == 0;
    err = errno;
  }
  if (placed && placed_flag != nullptr) *placed_flag = true;
  if (!placed || exclusive) ::unlink(tmp.c_str());
  if (!placed && exclusive && synced && err == EEXIST) return false;
  KVB_CHECK(placed, "cannot write ", path.string(), ": ", std::strerror(err));
  // The rename itself is durable only once the directory entry is on disk.
  const std::string dir = path.has_parent_path() ? path.parent_path().string() : ".";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return true;
}

}  // namespace kvbench
