// The CPU emulator's runtime: launch checks, the per-block fiber scheduler, barriers, warp
// rendezvous, dynamic shared memory fill and guards, and the runtime-API subset. See cuda_emu.h for
// the execution model.
#include "emu/cuda_emu.h"
#include "emu/checked.h"
#include "emu/internal.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define DMM_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DMM_EMU_ASAN 1
#endif
#endif
#ifdef DMM_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace dmm {
namespace emu {
namespace detail {

thread_local Fiber* tls_fiber = nullptr;
thread_local Block* tls_block = nullptr;

namespace {

// ---- per-OS-thread settings ------------------------------------------------------------------------
uint64_t env_seed() {
  const char* s = std::getenv("DMM_EMU_SEED");
  return s != nullptr ? std::strtoull(s, nullptr, 0) : 0;
}

struct ThreadSettings {
  uint64_t seed = env_seed();
  std::mt19937_64 rng{seed};
  bool nan_fill = true;
  uint64_t blocks_run = 0;
  uint64_t launches_run = 0;
  cudaError_t last_error = cudaSuccess;
};
ThreadSettings& settings() {
  static thread_local ThreadSettings s;
  return s;
}

// ---- fiber stacks: mmap'ed with a PROT_NONE guard page below, pooled per OS thread ------------------
size_t stack_bytes() {
  static const size_t bytes = [] {
    const char* s = std::getenv("DMM_EMU_STACK_KB");
    const size_t kb = s != nullptr ? std::strtoull(s, nullptr, 0) : 256;
    return std::max<size_t>(kb, 64) * 1024;
  }();
  return bytes;
}

}  // namespace

struct Stack {
  unsigned char* map = nullptr;  // guard page first
  size_t map_size = 0;
  unsigned char* lo() const { return map + page(); }
  size_t size() const { return map_size - page(); }
  static size_t page() { return size_t(sysconf(_SC_PAGESIZE)); }
};

namespace {

struct StackPool {
  std::vector<Stack> stacks;
  ~StackPool() {
    for (Stack& s : stacks) munmap(s.map, s.map_size);
  }
  void ensure(size_t n) {
    const size_t want = stack_bytes() + Stack::page();
    while (stacks.size() < n) {
      void* p = mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
      if (p == MAP_FAILED) throw Error("dmm-emu: cannot map a fiber stack");
      mprotect(p, Stack::page(), PROT_NONE);
      stacks.push_back(Stack{static_cast<unsigned char*>(p), want});
    }
  }
};
StackPool& stack_pool() {
  static thread_local StackPool pool;
  return pool;
}

// ---- dynamic shared memory buffers (DMM_EMU_DYNAMIC_SHARED) -----------------------------------------
struct SmemEntry {
  SmemGetter get;
  std::string where;
};
std::vector<SmemEntry>& smem_registry() {
  static std::vector<SmemEntry> r;
  return r;
}
std::mutex& smem_registry_mutex() {
  static std::mutex m;
  return m;
}

// ---- per-kernel dynamic shared memory opt-in (cudaFuncSetAttribute) ---------------------------------
std::mutex attr_mutex;
std::map<const void*, size_t>& smem_optin() {
  static std::map<const void*, size_t> m;
  return m;
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kSync: return "__syncwarp";
    case WarpOp::kShflIdx: return "__shfl_sync";
    case WarpOp::kShflUp: return "__shfl_up_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kShflXor: return "__shfl_xor_sync";
    case WarpOp::kBallot: return "__ballot_sync";
    case WarpOp::kAny: return "__any_sync";
    default: return "__all_sync";
  }
}

std::string site(const char* file, int line) {
  if (file == nullptr) return "?";
  const char* base = std::strrchr(file, '/');
  return std::string(base != nullptr ? base + 1 : file) + ":" + std::to_string(line);
}

// "0-15,32,40-47" for a sorted list of indices.
std::string ranges(const std::vector<int>& v) {
  std::ostringstream o;
  for (size_t i = 0; i < v.size();) {
    size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    if (i > 0) o << ",";
    o << v[i];
    if (j > i) o << "-" << v[j];
    i = j + 1;
  }
  return o.str();
}

std::string hex(unsigned m) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", m);
  return buf;
}

}  // namespace

// ---- fibers and blocks (internal.h) ----------------------------------------------------------------
std::string Block::where() const {
  std::ostringstream o;
  o << "dmm-emu: kernel '" << name << "' block " << block_name(linear);
  return o.str();
}
std::string Block::where(const Fiber& f) const { return where() + " thread " + thread_name(f.linear); }
std::string Block::thread_name(int t) const {
  std::ostringstream o;
  o << "(" << t % block.x << "," << t / block.x % block.y << "," << t / (block.x * block.y) << ")";
  return o.str();
}
std::string Block::block_name(uint64_t id) const {
  std::ostringstream o;
  o << "(" << id % grid.x << "," << id / grid.x % grid.y << "," << id / (uint64_t(grid.x) * grid.y) << ")";
  return o.str();
}

[[noreturn]] void outside_kernel(const char* what) {
  std::fprintf(stderr, "dmm-emu: %s used outside an emulated kernel\n", what);
  std::abort();
}
const uint3& thread_idx() {
  if (tls_fiber == nullptr) outside_kernel("threadIdx");
  return tls_fiber->tid;
}
const uint3& block_idx() {
  if (tls_block == nullptr) outside_kernel("blockIdx");
  return tls_block->idx;
}
const dim3& block_dim() {
  if (tls_block == nullptr) outside_kernel("blockDim");
  return tls_block->block;
}
const dim3& grid_dim() {
  if (tls_block == nullptr) outside_kernel("gridDim");
  return tls_block->grid;
}

namespace {

// ---- context switches ------------------------------------------------------------------------------
#if defined(__x86_64__)
// dmm_emu_switch(&from_sp, to_sp): pushes the callee-saved registers, MXCSR and the x87 control word
// on the running stack, saves the stack pointer, and pops the other context's from its stack.
extern "C" void dmm_emu_switch(void** from_sp, void* to_sp);
asm(R"(
  .text
  .p2align 4
  .type dmm_emu_switch, @function
dmm_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size dmm_emu_switch, .-dmm_emu_switch
)");

void switch_context(Context& from, Context& to) { dmm_emu_switch(&from.sp, to.sp); }

// A context that starts `entry` (which never returns) on `stack`: the frame dmm_emu_switch pops.
void make_context(Context& c, const Stack& stack, void (*entry)()) {
#ifdef DMM_EMU_ASAN
  // A pooled stack keeps the redzones of the last fiber's frames (fibers never return).
  ASAN_UNPOISON_MEMORY_REGION(stack.lo(), stack.size());
#endif
  auto** sp = reinterpret_cast<void**>((reinterpret_cast<uintptr_t>(stack.lo()) + stack.size()) &
                                        ~uintptr_t(15));
  *--sp = nullptr;                            // entry starts as if called: rsp = 8 (mod 16)
  *--sp = reinterpret_cast<void*>(entry);     // where the first switch returns to
  for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp, rbx, r12-r15
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  *--sp = reinterpret_cast<void*>(uintptr_t(mxcsr) | uintptr_t(fpucw) << 32);
  c.sp = sp;
}
#else
void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
void make_context(Context& c, const Stack& stack, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack.lo();
  c.uc.uc_stack.ss_size = stack.size();
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

// Back to the scheduler; `dying`: the fiber never runs again (ASan drops its fake stack).
void switch_to_scheduler(Fiber* f, bool dying) {
  Block* b = tls_block;
#ifdef DMM_EMU_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &f->fake_stack, b->sched_stack_bottom,
                                 b->sched_stack_size);
#else
  (void)dying;
#endif
  switch_context(f->ctx, b->sched);
#ifdef DMM_EMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
}

void fiber_main() {
  Block* b = tls_block;
  Fiber* f = tls_fiber;
#ifdef DMM_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b->sched_stack_bottom, &b->sched_stack_size);
#endif
  try {
    (*b->body)();
    f->state = Fiber::kDone;
  } catch (const std::exception& e) {
    if (b->error.empty()) b->error = e.what();
    f->state = Fiber::kFailed;
  } catch (...) {
    if (b->error.empty()) b->error = b->where(*f) + ": the kernel threw a non-standard exception";
    f->state = Fiber::kFailed;
  }
  switch_to_scheduler(f, /*dying=*/true);
  std::abort();  // a finished fiber is never resumed
}

void resume(Block* b, Fiber* f) {
  tls_fiber = f;
  tls_in_kernel = true;
#ifdef DMM_EMU_ASAN
  __sanitizer_start_switch_fiber(&b->sched_fake_stack, f->stack->lo(), f->stack->size());
#endif
  switch_context(b->sched, f->ctx);
#ifdef DMM_EMU_ASAN
  __sanitizer_finish_switch_fiber(b->sched_fake_stack, nullptr, nullptr);
#endif
  tls_fiber = nullptr;
  tls_in_kernel = false;
}

// Where the fibers not yet past `skip` stand, grouped: "threads 0-63 exited; threads 64-127 wait at
// __syncthreads (k.cuh:12)".
std::string describe(const Block& b, const std::vector<int>& ids) {
  std::map<std::string, std::vector<int>> groups;
  for (int i : ids) {
    const Fiber& f = b.fibers[i];
    std::string what;
    switch (f.state) {
      case Fiber::kDone: what = "exited"; break;
      case Fiber::kBarrier: what = "wait at __syncthreads (" + site(f.file, f.line) + ")"; break;
      case Fiber::kWarp:
        what = std::string("wait at ") + op_name(f.op) + " (" + site(f.file, f.line) + ")";
        break;
      case Fiber::kRunnable: what = "are runnable"; break;
      default: what = "failed"; break;
    }
    groups[what].push_back(f.linear);
  }
  std::string s;
  for (auto& [what, v] : groups) {
    if (!s.empty()) s += "; ";
    s += (v.size() == 1 ? "thread " : "threads ") + ranges(v) + " " + what;
  }
  return s;
}

// No fiber can run. Either every thread waits at one barrier (release it) or the block is stuck:
// returns the error message then ("" after a release or when all threads exited).
std::string settle(Block& b) {
  std::vector<int> at_barrier, at_warp, done;
  for (int i = 0; i < b.n(); ++i) {
    switch (b.fibers[i].state) {
      case Fiber::kBarrier: at_barrier.push_back(i); break;
      case Fiber::kWarp: at_warp.push_back(i); break;
      case Fiber::kDone: done.push_back(i); break;
      default: break;
    }
  }
  if (int(done.size()) == b.n()) return "";
  std::vector<int> all(b.n());
  for (int i = 0; i < b.n(); ++i) all[i] = i;
  if (int(at_barrier.size()) == b.n()) {
    const Fiber& f0 = b.fibers[0];
    bool same = true;
    for (int i : at_barrier)
      same = same && b.fibers[i].line == f0.line && std::strcmp(b.fibers[i].file, f0.file) == 0;
    if (!same)
      return b.where() + ": divergent __syncthreads: the threads of the block wait at different "
                         "barriers: " + describe(b, all);
    int count = 0;
    for (const Fiber& f : b.fibers) count += f.pred;
    for (Fiber& f : b.fibers) {
      f.state = Fiber::kRunnable;
      f.count = count;
    }
    mem_barrier(b);
    b.next = all;
    return "";
  }
  if (!at_warp.empty()) {
    const Fiber& f = b.fibers[at_warp.front()];
    const int w = f.linear / kWarpSize;
    const WarpState& ws = b.warps[w];
    std::vector<int> missing;
    for (int l = 0; l < kWarpSize; ++l)
      if ((ws.mask >> l & 1u) && !(ws.arrived >> l & 1u)) missing.push_back(w * kWarpSize + l);
    std::vector<int> arrived;
    for (int l = 0; l < kWarpSize; ++l)
      if (ws.arrived >> l & 1u) arrived.push_back(w * kWarpSize + l);
    return b.where() + ": " + op_name(ws.op) + "(mask " + hex(ws.mask) + ") at " +
           site(ws.file, ws.line) + " in warp " + std::to_string(w) + " is reached by lanes of threads " +
           ranges(arrived) + " only; the other threads of the mask never arrive: " +
           describe(b, missing) + " (a warp intrinsic in a divergent branch?)";
  }
  const Fiber& f = b.fibers[at_barrier.front()];
  return b.where() + ": __syncthreads at " + site(f.file, f.line) + " is reached by " +
         std::to_string(at_barrier.size()) + " of " + std::to_string(b.n()) +
         " threads, never by the others: " + describe(b, all) +
         " (every thread of the block must reach each barrier)";
}

// A snapshot of the registered dynamic shared-memory arrays (one per DMM_EMU_DYNAMIC_SHARED).
std::vector<SmemEntry> smem_entries() {
  const std::lock_guard<std::mutex> lock(smem_registry_mutex());
  return smem_registry();
}

void fill_dynamic_smem(const Block& b) {
  const size_t cap = kMaxDynamicSmem + kSmemGuard;
  for (const SmemEntry& e : smem_entries()) {
    unsigned char* p = e.get();
#ifdef DMM_EMU_ASAN
    ASAN_UNPOISON_MEMORY_REGION(p, cap);
#endif
    if (settings().nan_fill) std::memset(p, 0xff, b.smem);
    std::memset(p + b.smem, 0xff, std::min(kSmemGuard, cap - b.smem));
#ifdef DMM_EMU_ASAN
    ASAN_POISON_MEMORY_REGION(p + b.smem, cap - b.smem);
#endif
  }
}

// A write past the requested dynamic shared memory shows as a changed guard byte.
std::string check_smem_guard(const Block& b) {
  const size_t cap = kMaxDynamicSmem + kSmemGuard;
  for (const SmemEntry& e : smem_entries()) {
    unsigned char* p = e.get();
#ifdef DMM_EMU_ASAN
    ASAN_UNPOISON_MEMORY_REGION(p, cap);
#endif
    const size_t n = std::min(kSmemGuard, cap - b.smem);
    for (size_t i = 0; i < n; ++i)
      if (p[b.smem + i] != 0xff)
        return b.where() + ": wrote dynamic shared memory '" + e.where + "' at byte " +
               std::to_string(b.smem + i) + ", past the " + std::to_string(b.smem) +
               " bytes the launch requested";
  }
  return "";
}

void run_block(Block& b) {
  StackPool& pool = stack_pool();
  pool.ensure(size_t(b.n()));
  for (int i = 0; i < b.n(); ++i) {
    Fiber& f = b.fibers[i];
    f.state = Fiber::kRunnable;
    f.stack = &pool.stacks[i];
    f.fake_stack = nullptr;
    f.pred = f.count = 0;
    make_context(f.ctx, *f.stack, fiber_main);
  }
  for (WarpState& w : b.warps) w = WarpState{};
  fill_dynamic_smem(b);
  mem_block_begin(b);
  b.next.resize(b.n());
  for (int i = 0; i < b.n(); ++i) b.next[i] = i;
  std::vector<int> order;
  ThreadSettings& ts = settings();
  for (;;) {
    if (b.next.empty()) {
      b.error = settle(b);
      if (!b.error.empty() || b.next.empty()) break;  // stuck, or every thread exited
    }
    order.swap(b.next);
    b.next.clear();
    if (ts.seed != 0) std::shuffle(order.begin(), order.end(), ts.rng);
    for (int i : order) {
      if (b.fibers[i].state != Fiber::kRunnable) continue;
      resume(&b, &b.fibers[i]);
      if (!b.error.empty()) break;
    }
    if (!b.error.empty()) break;
  }
  if (b.error.empty()) b.error = check_smem_guard(b);
#ifdef DMM_EMU_ASAN
  if (!b.error.empty()) {
    // Abandoned fibers leave their frames' redzones poisoned on the pooled stacks.
    for (int i = 0; i < b.n(); ++i) ASAN_UNPOISON_MEMORY_REGION(pool.stacks[i].lo(), pool.stacks[i].size());
  }
#endif
  ++ts.blocks_run;
}

}  // namespace

int barrier(int pred, const char* file, int line) {
  Fiber* f = tls_fiber;
  if (f == nullptr) outside_kernel("__syncthreads");
  f->state = Fiber::kBarrier;
  f->file = file;
  f->line = line;
  f->pred = pred;
  switch_to_scheduler(f, false);
  return f->count;
}

uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t bits, int arg, int width, const char* file,
                       int line) {
  Fiber* f = tls_fiber;
  if (f == nullptr) outside_kernel(op_name(op));
  Block& b = *tls_block;
  const int lane = f->linear % kWarpSize, w = f->linear / kWarpSize;
  const int lanes_here = std::min(kWarpSize, b.n() - w * kWarpSize);
  const unsigned exist = lanes_here == 32 ? 0xffffffffu : (1u << lanes_here) - 1u;
  // (built only for a message: a fiber abandoned while it waits here must hold no heap memory)
  auto at = [&] { return std::string(op_name(op)) + "(mask " + hex(mask) + ") at " + site(file, line); };
  if (!(mask >> lane & 1u))
    throw Error(b.where(*f) + ": " + at() + ": the calling lane " + std::to_string(lane) +
                " is not in the mask");
  if (mask & ~exist)
    throw Error(b.where(*f) + ": " + at() + ": the mask names lanes that do not exist (warp " +
                std::to_string(w) + " has " + std::to_string(lanes_here) + " threads)");
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    throw Error(b.where(*f) + ": " + at() + ": width " + std::to_string(width) +
                " is not a power of two in [1, 32]");
  WarpState& ws = b.warps[w];
  if (!ws.active) {
    ws.active = true;
    ws.op = op;
    ws.mask = mask;
    ws.width = width;
    ws.file = file;
    ws.line = line;
    ws.arrived = 0;
  } else if (ws.op != op || ws.mask != mask || ws.width != width || ws.line != line ||
             std::strcmp(ws.file, file) != 0) {
    std::vector<int> waiting;
    for (int l = 0; l < kWarpSize; ++l)
      if (ws.arrived >> l & 1u) waiting.push_back(w * kWarpSize + l);
    throw Error(b.where(*f) + ": " + at() + " (width " + std::to_string(width) +
                ") while threads " + ranges(waiting) + " of its warp wait at " + op_name(ws.op) +
                "(mask " + hex(ws.mask) + ") at " + site(ws.file, ws.line) + " (width " +
                std::to_string(ws.width) + "): divergent warp intrinsics");
  }
  f->bits = bits;
  f->arg = arg;
  f->op = op;
  ws.arrived |= 1u << lane;
  if (ws.arrived != ws.mask) {
    f->state = Fiber::kWarp;
    f->file = file;
    f->line = line;
    switch_to_scheduler(f, false);
    return f->result;
  }
  // Last lane of the mask: exchange, wake the others.
  ws.active = false;
  mem_warp_sync(b, w, mask);
  Fiber* lanes = &b.fibers[size_t(w) * kWarpSize];
  unsigned ballot = 0;
  for (int l = 0; l < kWarpSize; ++l)
    if ((mask >> l & 1u) && lanes[l].bits != 0) ballot |= 1u << l;
  for (int l = 0; l < kWarpSize; ++l) {
    if (!(mask >> l & 1u)) continue;
    Fiber& g = lanes[l];
    const int seg = l & ~(width - 1), last = seg + width - 1;
    int j = l;
    bool in_range = true;
    switch (op) {
      case WarpOp::kShflIdx: j = seg | (g.arg & (width - 1)); break;
      case WarpOp::kShflUp: j = l - (g.arg & 31); in_range = j >= seg; break;
      case WarpOp::kShflDown: j = l + (g.arg & 31); in_range = j <= last; break;
      case WarpOp::kShflXor: j = l ^ (g.arg & 31); in_range = j <= last; break;
      default: break;
    }
    switch (op) {
      case WarpOp::kSync: g.result = 0; break;
      case WarpOp::kBallot: g.result = ballot; break;
      case WarpOp::kAny: g.result = ballot != 0; break;
      case WarpOp::kAll: g.result = ballot == mask; break;
      default:
        if (!in_range) {
          g.result = g.bits;  // outside the segment: the caller's own value
        } else if (!(mask >> j & 1u)) {
          throw Error(b.where(g) + ": " + at() + ": lane " + std::to_string(l) + " reads lane " +
                      std::to_string(j) + ", which is not in the mask (undefined on the GPU)");
        } else {
          g.result = lanes[j].bits;
        }
    }
    if (&g != f) {
      g.state = Fiber::kRunnable;
      b.next.push_back(int(&g - b.fibers.data()));
    }
  }
  return f->result;
}

bool register_dynamic_smem(SmemGetter get, const char* name, const char* file, int line) {
  const std::lock_guard<std::mutex> lock(smem_registry_mutex());
  smem_registry().push_back(SmemEntry{get, std::string(name) + " (" + site(file, line) + ")"});
  return true;
}

void launch(const void* kernel, const char* name, dim3 grid, dim3 block, size_t smem,
            cudaStream_t stream, const std::function<void()>& thread_body) {
  (void)stream;  // one OS thread, in order: every stream is the default stream
  auto fail = [&](const std::string& why) {
    throw Error(std::string("dmm-emu: launch of kernel '") + name + "' <<<(" + std::to_string(grid.x) +
                "," + std::to_string(grid.y) + "," + std::to_string(grid.z) + "), (" +
                std::to_string(block.x) + "," + std::to_string(block.y) + "," +
                std::to_string(block.z) + "), " + std::to_string(smem) + ">>>: " + why);
  };
  if (tls_fiber != nullptr) fail("launched from inside a kernel (dynamic parallelism is not emulated)");
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0)
    fail("a grid or block dimension is 0 (cudaErrorInvalidConfiguration)");
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads > kMaxThreadsPerBlock)
    fail(std::to_string(threads) + " threads per block exceed 1024 (cudaErrorInvalidConfiguration)");
  if (block.x > kMaxBlockDimXY || block.y > kMaxBlockDimXY || block.z > kMaxBlockDimZ)
    fail("blockDim exceeds (1024, 1024, 64) (cudaErrorInvalidConfiguration)");
  if (grid.x > kMaxGridDimX || grid.y > kMaxGridDimYZ || grid.z > kMaxGridDimYZ)
    fail("gridDim exceeds (2^31-1, 65535, 65535) (cudaErrorInvalidConfiguration)");
  const size_t limit = dynamic_smem_limit(kernel);
  if (smem > limit) {
    if (limit == kDefaultDynamicSmem && smem <= kMaxDynamicSmem)
      fail(std::to_string(smem) + " bytes of dynamic shared memory exceed the default " +
           std::to_string(limit) + " without cudaFuncSetAttribute(kernel, "
           "cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)");
    fail(std::to_string(smem) + " bytes of dynamic shared memory exceed the " + std::to_string(limit) +
         " bytes allowed for this kernel");
  }

  ++settings().launches_run;
  Block b;
  b.name = name;
  b.grid = grid;
  b.block = block;
  b.smem = smem;
  b.body = &thread_body;
  b.fibers.resize(size_t(threads));
  for (unsigned z = 0, i = 0; z < block.z; ++z)
    for (unsigned y = 0; y < block.y; ++y)
      for (unsigned x = 0; x < block.x; ++x, ++i) {
        b.fibers[i].tid = uint3{x, y, z};
        b.fibers[i].linear = int(i);
      }
  b.warps.resize((size_t(threads) + kWarpSize - 1) / kWarpSize);
  b.warp_gen.resize(b.warps.size());

  const uint64_t n_blocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order;
  ThreadSettings& ts = settings();
  if (ts.seed != 0 && n_blocks <= (uint64_t(1) << 22)) {
    order.resize(n_blocks);
    for (uint64_t i = 0; i < n_blocks; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), ts.rng);
  }
  Block* const saved_block = tls_block;
  tls_block = &b;
  mem_launch_begin(name, smem);
  for (uint64_t k = 0; k < n_blocks; ++k) {
    const uint64_t id = order.empty() ? k : order[k];
    b.linear = id;
    b.idx = uint3{unsigned(id % grid.x), unsigned(id / grid.x % grid.y),
                  unsigned(id / (uint64_t(grid.x) * grid.y))};
    run_block(b);
    if (!b.error.empty()) {
      mem_launch_end(false);
      tls_block = saved_block;
      throw Error(b.error);
    }
  }
  tls_block = saved_block;
  mem_launch_end(true);  // throws when an output was not written in full
}

// ---- fp16 ------------------------------------------------------------------------------------------
uint16_t float_to_half_bits(float f) {
  const uint32_t x = f32_bits(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7fff;                  // NaN (canonical, as CUDA returns)
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                                // below 2^-14: subnormal half or zero
    // |f| * 2^24 is exact in float; round half to even to an integer count of 2^-24 units (a result
    // of 0x400 is the smallest normal, whose bits are the same).
    const float scaled = f32_from(ax) * 16777216.0f;
    return uint16_t(sign | uint32_t(nearbyintf(scaled)));
  }
  uint32_t h = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13));
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return uint16_t(sign | h);
}

float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = float(m) * 5.9604644775390625e-08f;  // 2^-24
    return sign ? -v : v;
  }
  if (e == 31) return f32_from(sign | 0x7f800000u | (m << 13));
  return f32_from(sign | ((e - 15 + 127) << 23) | (m << 13));
}

}  // namespace detail

void set_schedule_seed(uint64_t seed) {
  detail::settings().seed = seed;
  detail::settings().rng.seed(seed);
}
uint64_t schedule_seed() { return detail::settings().seed; }
void set_nan_fill(bool on) { detail::settings().nan_fill = on; }
bool nan_fill() { return detail::settings().nan_fill; }
uint64_t blocks_run() { return detail::settings().blocks_run; }
uint64_t launches_run() { return detail::settings().launches_run; }

size_t dynamic_smem_limit(const void* kernel) {
  const std::lock_guard<std::mutex> lock(detail::attr_mutex);
  const auto it = detail::smem_optin().find(kernel);
  return it == detail::smem_optin().end() ? kDefaultDynamicSmem
                                          : std::max(kDefaultDynamicSmem, it->second);
}

}  // namespace emu
}  // namespace dmm

// ---- runtime API -----------------------------------------------------------------------------------
const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "unknown error";
  }
}
cudaError_t cudaGetLastError() {
  cudaError_t& e = dmm::emu::detail::settings().last_error;
  const cudaError_t r = e;
  e = cudaSuccess;
  return r;
}
cudaError_t cudaPeekAtLastError() { return dmm::emu::detail::settings().last_error; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  auto bad = [] {
    dmm::emu::detail::settings().last_error = cudaErrorInvalidValue;
    return cudaErrorInvalidValue;
  };
  if (func == nullptr) return bad();
  switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize: {
      if (value < 0 || size_t(value) > dmm::emu::kMaxDynamicSmem) return bad();
      const std::lock_guard<std::mutex> lock(dmm::emu::detail::attr_mutex);
      dmm::emu::detail::smem_optin()[func] = size_t(value);
      return cudaSuccess;
    }
    case cudaFuncAttributePreferredSharedMemoryCarveout:
      return value >= -1 && value <= 100 ? cudaSuccess : bad();
    default: return bad();
  }
}
