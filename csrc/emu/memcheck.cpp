// The emulator's memory checker (see checked.h and README.md):
//   * bounds, alignment and permission reports of checked pointers;
//   * per launch: the buffers the arguments captured (aliasing ones merged into one region), which
//     bytes were read and written (byte counters per kernel; outputs written in full);
//   * the race check (DMM_EMU_RACECHECK=1): a happens-before shadow of shared memory (per block)
//     and of the writable global buffers (per launch), one cell per 2 bytes.
//
// Happens-before, as on a GPU with independent thread scheduling: two accesses to one byte by
// different threads, at least one a write and not both atomic, conflict unless
//   * they are in different launches (global memory), or
//   * they are in one block and a __syncthreads lies between them (every barrier interval of a
//     block has its own epoch number), or
//   * they are in one warp and a warp synchronisation (__syncwarp, shuffle, vote) of both lanes lies
//     between them: every thread keeps, per lane of its warp, the count of that lane's latest warp
//     synchronisation it has heard of (a vector clock), and an access records its lane's count.
// Blocks of one launch are never ordered. A cell keeps the last write (and a second unordered
// atomic writer), the reads of the present barrier interval (first reader, lanes of its warp with
// their latest count, one reader of another warp), and for global memory a summary of the earlier
// blocks of the launch (written, all atomically; read).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu/checked.h"
#include "emu/internal.h"

namespace dmm {
namespace emu {
namespace detail {


namespace {

constexpr int64_t kGranule = 2;  // bytes per shadow cell and per bit of the read / write maps

std::atomic<int>& racecheck_flag() {
  static std::atomic<int> flag([] {
    const char* e = std::getenv("DMM_EMU_RACECHECK");
    return e != nullptr && *e != '\0' && std::strcmp(e, "0") != 0 ? 1 : 0;
  }());
  return flag;
}

// ---- shadow cells (all zero = nothing recorded; thread ids are stored + 1) ----------------------------
enum CellFlags : uint8_t {
  kWAtomic = 1,       // the last write was atomic
  kPrevWritten = 2,   // global: an earlier block of the launch wrote the byte
  kPrevAtomic = 4,    // ... every such write atomic
  kPrevRead = 8,      // global: an earlier block read it
};
struct Cell {
  uint64_t w_epoch, r_epoch;    // barrier interval of the last write / of the reads below
  uint64_t w_block, r_block;    // block of the last write / first reader (messages)
  uint64_t p_w_block, p_r_block;
  uint32_t w_gen, w2_gen;       // the writer's warp-sync count at the write
  uint32_t r_gen, r_lanes;      // max count and lanes of the readers in r_tid's warp
  uint16_t w_tid, w2_tid;       // last writer; another atomic writer not ordered with it
  uint16_t r_tid, r_far;        // first reader; a reader in another warp
  uint16_t p_w_tid, p_r_tid;
  uint8_t flags;
};
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Shadow = std::unique_ptr<Cell[], FreeDeleter>;
Shadow new_shadow(size_t cells) {
  void* p = std::calloc(cells == 0 ? 1 : cells, sizeof(Cell));  // zero pages: cheap until touched
  if (p == nullptr) throw Error("dmm-emu: out of memory for the race check's shadow");
  return Shadow(static_cast<Cell*>(p));
}

// ---- per-launch state -------------------------------------------------------------------------------
struct Captured {
  const unsigned char* base;
  int64_t bytes;
  const char* name;
  uint8_t flags, elem;
};
struct Region {  // one buffer, or several that overlap (an in-place op)
  uintptr_t lo, hi;
  bool writable = false;
  Shadow shadow;  // race check: writable regions only
  std::vector<uint64_t> read_bits, write_bits;
  size_t cells() const { return size_t((hi - lo + kGranule - 1) / kGranule); }
};
struct LaunchState {
  bool active = false;
  uint64_t serial = 0, start_epoch = 0, blocks = 0;
  const char* kernel = "";
  std::vector<Captured> captured;
  std::vector<int> slot_region;
  std::vector<Region> regions;
  uint64_t bytes_read = 0, bytes_written = 0;
};
struct StaticArray {
  void* storage;
  size_t bytes;
  uint64_t filled_in_block = 0;
  Shadow shadow;
};
struct MemThread {
  uint64_t serials = 0, epochs = 0, block_serials = 0;
  std::vector<Captured> pending;
  uint64_t pending_serial = 0;
  LaunchState launch;
  size_t dyn_bytes = 0;  // dynamic shared memory of the present launch
  Shadow dyn_shadow;
  size_t dyn_shadow_cells = 0;
  std::vector<StaticArray> statics;
  std::unordered_map<void*, int> static_index;
};
MemThread& mt() {
  static thread_local MemThread m;
  return m;
}

// The runtime's own dynamic shared memory (dynamic_smem<T>()), filled and guarded like the
// DMM_EMU_DYNAMIC_SHARED arrays.
DMM_EMU_DYNAMIC_SHARED(dmm_dynamic_smem);

// ---- messages -----------------------------------------------------------------------------------------
std::string who() {
  if (tls_in_kernel && tls_block != nullptr && tls_fiber != nullptr) return tls_block->where(*tls_fiber);
  return "dmm-emu: host code";
}
std::string buffer_name(const BufferRef& b) {
  if (b.flags & BufferRef::kShared)
    return b.slot == 0 ? std::string("dynamic shared memory")
                       : "shared array '" + std::string(b.name != nullptr ? b.name : "?") + "'";
  return "'" + std::string(b.name != nullptr ? b.name : "?") + "'";
}
const char* verb(Access a) {
  return a == Access::kRead ? "reads" : a == Access::kWrite ? "writes" : "atomically updates";
}
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
std::string at_element(const BufferRef& b, int64_t off) {
  std::ostringstream o;
  o << "element " << floor_div(off, b.elem) << " (byte " << off << ")";
  return o.str();
}

}  // namespace

// ---- counters ------------------------------------------------------------------------------------------
namespace {
std::mutex& counters_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::string, KernelCounters>& counters_map() {
  static std::map<std::string, KernelCounters> m;
  return m;
}
void add_counters(const char* kernel, const KernelCounters& k) {
  const std::lock_guard<std::mutex> lock(counters_mutex());
  KernelCounters& t = counters_map()[kernel];
  t.launches += k.launches;
  t.blocks += k.blocks;
  t.bytes_read += k.bytes_read;
  t.bytes_written += k.bytes_written;
  t.unique_bytes_read += k.unique_bytes_read;
  t.unique_bytes_written += k.unique_bytes_written;
}
}  // namespace

// ---- checked pointers ---------------------------------------------------------------------------------
void capture(BufferRef& b) noexcept {
  MemThread& m = mt();
  b.slot = int32_t(m.pending.size());
  b.launch = m.pending_serial;
  m.pending.push_back(Captured{b.base, b.bytes, b.name, b.flags, b.elem});
}
void begin_capture() {
  MemThread& m = mt();
  m.pending.clear();
  m.pending_serial = ++m.serials;
  tls_capturing = true;
}
void end_capture() { tls_capturing = false; }

[[noreturn]] void bad_access(const BufferRef& b, const void* p, size_t size, Access a) {
  const std::string w = who() + ": " + verb(a) + " " + buffer_name(b);
  if (b.base == nullptr)
    throw Error(w + ", which is absent (a null pointer: an optional input that was not given?)");
  const int64_t off = int64_t(reinterpret_cast<uintptr_t>(p)) - int64_t(reinterpret_cast<uintptr_t>(b.base));
  if (off < 0 || off + int64_t(size) > b.bytes) {
    std::ostringstream o;
    o << w << " at " << at_element(b, off) << ", outside ";
    if (b.flags & BufferRef::kShared)
      o << "its " << b.bytes << " bytes" << (b.slot == 0 ? " (past the dynamic shared memory the launch requested)" : "");
    else
      o << "its " << b.bytes / b.elem << " elements (" << b.bytes << " bytes): out of bounds";
    throw Error(o.str());
  }
  if (a != Access::kRead && !(b.flags & BufferRef::kWritable))
    throw Error(w + " at " + at_element(b, off) + ", a read-only buffer (an input)");
  std::ostringstream o;
  o << w << " at " << at_element(b, off) << " with a " << size << "-byte access that is not " << size
    << "-byte aligned" << ((b.flags & BufferRef::kShared) && size > b.align
                               ? " (the array is declared with " + std::to_string(int(b.align)) + "-byte alignment)"
                               : std::string())
    << ": a misaligned address on the GPU";
  throw Error(o.str());
}

BufferRef dynamic_smem_ref() {
  if (tls_block == nullptr) throw Error("dmm-emu: dynamic_smem() used outside an emulated kernel");
  BufferRef b(dmm_dynamic_smem, int64_t(tls_block->smem), "dynamic shared memory",
              BufferRef::kShared | BufferRef::kWritable, 1, 16);
  b.slot = 0;
  return b;
}

BufferRef static_smem_ref(void* storage, size_t bytes, const char* name, uint8_t elem, uint8_t align) {
  Block* blk = tls_block;
  if (blk == nullptr) throw Error("dmm-emu: a static shared array used outside an emulated kernel");
  MemThread& m = mt();
  auto [it, fresh] = m.static_index.try_emplace(storage, int(m.statics.size()));
  if (fresh) m.statics.push_back(StaticArray{storage, bytes, 0, new_shadow(size_t((bytes + kGranule - 1) / kGranule))});
  StaticArray& s = m.statics[size_t(it->second)];
  if (s.filled_in_block != blk->serial) {  // first use in this block: undefined contents, as on the GPU
    s.filled_in_block = blk->serial;
    if (nan_fill()) std::memset(storage, 0xff, bytes);
  }
  BufferRef b(storage, int64_t(bytes), name, BufferRef::kShared | BufferRef::kWritable, elem, align);
  b.slot = it->second + 1;
  return b;
}

// ---- the race check -------------------------------------------------------------------------------------
namespace {

enum class Order { kOtherBlock, kOtherWarp, kSameWarp };

// The accessing thread.
struct Me {
  const Block& blk;
  const Fiber& f;
  int tid, warp, lane;
  uint32_t gen;  // this lane's latest warp synchronisation
  bool shared;
};

// Whether an access of thread `tid` in the present block at `epoch` with warp-sync count `gen`
// happens before the present one.
bool ordered(const Me& me, int tid, uint64_t epoch, uint32_t gen) {
  if (tid == me.tid || epoch != me.blk.epoch) return true;
  if (tid / kWarpSize != me.warp) return false;
  return me.f.known[tid % kWarpSize] > gen;
}
Order order_of(const Me& me, int tid) { return tid / kWarpSize == me.warp ? Order::kSameWarp : Order::kOtherWarp; }

[[noreturn]] void race(const Me& me, const BufferRef& b, int64_t off, Access a, const char* other_did,
                       int other_tid, uint64_t other_block, Order why) {
  std::ostringstream o;
  o << me.blk.where(me.f) << ": race on " << (me.shared ? "shared" : "global") << " memory "
    << buffer_name(b) << " at " << at_element(b, off) << ": this thread " << verb(a)
    << " it, and thread " << me.blk.thread_name(other_tid);
  if (why == Order::kOtherBlock) o << " of block " << me.blk.block_name(other_block);
  o << " " << other_did << " it, with nothing ordering the two: ";
  switch (why) {
    case Order::kOtherBlock:
      o << "blocks of one launch run in no fixed order (use atomics, or split the launch)";
      break;
    case Order::kOtherWarp:
      o << "another warp, no __syncthreads between them";
      break;
    case Order::kSameWarp:
      o << "the same warp, no __syncwarp or warp shuffle of both lanes between them (lanes of a warp "
           "do not run in lockstep)";
      break;
  }
  throw Error(o.str());
}

void fold_earlier_blocks(Cell& c, uint64_t block_start) {
  if (c.w_epoch != 0 && c.w_epoch < block_start) {
    const bool atomic = c.flags & kWAtomic;
    if (!(c.flags & kPrevWritten)) {
      c.flags |= kPrevWritten | (atomic ? kPrevAtomic : 0);
      c.p_w_tid = c.w_tid;
      c.p_w_block = c.w_block;
    } else if (!atomic) {
      c.flags &= uint8_t(~kPrevAtomic);
      c.p_w_tid = c.w_tid;
      c.p_w_block = c.w_block;
    }
    c.w_epoch = 0;
    c.w2_tid = 0;
  }
  if (c.r_epoch != 0 && c.r_epoch < block_start) {
    c.flags |= kPrevRead;
    c.p_r_tid = c.r_tid;
    c.p_r_block = c.r_block;
    c.r_epoch = 0;
  }
}

void check_cell(const Me& me, Cell& c, const BufferRef& b, int64_t off, Access a) {
  const uint64_t block_start = me.blk.start_epoch;
  if (me.shared) {  // what earlier blocks left is not this block's
    if (c.w_epoch < block_start) c.w_epoch = 0, c.w2_tid = 0;
    if (c.r_epoch < block_start) c.r_epoch = 0;
  } else {
    fold_earlier_blocks(c, block_start);
  }
  const bool atomic = a == Access::kAtomic;
  const char* wrote = (c.flags & kWAtomic) ? "atomically updated" : "wrote";
  if (a != Access::kWrite) {  // reads (an atomic reads too)
    if (c.flags & kPrevWritten && !(atomic && (c.flags & kPrevAtomic)))
      race(me, b, off, a, (c.flags & kPrevAtomic) ? "atomically updated" : "wrote", c.p_w_tid - 1,
           c.p_w_block, Order::kOtherBlock);
    if (c.w_epoch != 0) {
      const bool both_atomic = atomic && (c.flags & kWAtomic);
      if (!both_atomic && !ordered(me, c.w_tid - 1, c.w_epoch, c.w_gen))
        race(me, b, off, a, wrote, c.w_tid - 1, 0, order_of(me, c.w_tid - 1));
      if (!atomic && c.w2_tid != 0 && !ordered(me, c.w2_tid - 1, c.w_epoch, c.w2_gen))
        race(me, b, off, a, "atomically updated", c.w2_tid - 1, 0, order_of(me, c.w2_tid - 1));
    } else if (me.shared) {
      std::ostringstream o;
      o << me.blk.where(me.f) << ": " << verb(a) << " " << buffer_name(b) << " at " << at_element(b, off)
        << ", which no thread of the block has written: shared memory starts undefined in every block";
      throw Error(o.str());
    }
  }
  if (a != Access::kRead) {  // writes
    if (c.flags & kPrevRead)
      race(me, b, off, a, "read", c.p_r_tid - 1, c.p_r_block, Order::kOtherBlock);
    if (a == Access::kWrite && (c.flags & kPrevWritten))
      race(me, b, off, a, (c.flags & kPrevAtomic) ? "atomically updated" : "wrote", c.p_w_tid - 1,
           c.p_w_block, Order::kOtherBlock);
    if (a == Access::kWrite && c.w_epoch != 0) {
      if (!ordered(me, c.w_tid - 1, c.w_epoch, c.w_gen))
        race(me, b, off, a, wrote, c.w_tid - 1, 0, order_of(me, c.w_tid - 1));
      if (c.w2_tid != 0 && !ordered(me, c.w2_tid - 1, c.w_epoch, c.w2_gen))
        race(me, b, off, a, "atomically updated", c.w2_tid - 1, 0, order_of(me, c.w2_tid - 1));
    }
    if (c.r_epoch == me.blk.epoch) {  // reads of this barrier interval (earlier ones are ordered)
      const int r0 = c.r_tid - 1, rwarp = r0 / kWarpSize;
      if (rwarp != me.warp) race(me, b, off, a, "read", r0, 0, Order::kOtherWarp);
      if (c.r_far != 0) race(me, b, off, a, "read", c.r_far - 1, 0, Order::kOtherWarp);
      const uint32_t others = c.r_lanes & ~(1u << me.lane);
      for (int l = 0; l < kWarpSize; ++l)
        if ((others >> l & 1u) && !(me.f.known[l] > c.r_gen))
          race(me, b, off, a, "read", rwarp * kWarpSize + l, 0, Order::kSameWarp);
    }
    // record the write
    if (atomic && c.w_epoch == me.blk.epoch && (c.flags & kWAtomic) && c.w_tid - 1 != me.tid &&
        !ordered(me, c.w_tid - 1, c.w_epoch, c.w_gen)) {
      c.w2_tid = c.w_tid;
      c.w2_gen = c.w_gen;
    } else {
      c.w2_tid = 0;
    }
    c.w_epoch = me.blk.epoch;
    c.w_tid = uint16_t(me.tid + 1);
    c.w_gen = me.gen;
    c.w_block = me.blk.linear;
    c.flags = uint8_t((c.flags & ~kWAtomic) | (atomic ? kWAtomic : 0));
    if (!atomic) c.r_epoch = 0;  // every read so far happens before this write (else: reported)
    return;
  }
  // record the read
  if (c.r_epoch != me.blk.epoch) {
    c.r_epoch = me.blk.epoch;
    c.r_tid = uint16_t(me.tid + 1);
    c.r_lanes = 1u << me.lane;
    c.r_gen = me.gen;
    c.r_far = 0;
    c.r_block = me.blk.linear;
  } else if ((c.r_tid - 1) / kWarpSize == me.warp) {
    c.r_lanes |= 1u << me.lane;
    c.r_gen = std::max(c.r_gen, me.gen);
  } else if (c.r_far == 0) {
    c.r_far = uint16_t(me.tid + 1);
  }
}

void check_cells(Cell* shadow, uintptr_t region_lo, const BufferRef& b, const void* p, size_t size,
                 Access a, bool shared) {
  const Block& blk = *tls_block;
  const Fiber& f = *tls_fiber;
  const Me me{blk, f, f.linear, f.linear / kWarpSize, f.linear % kWarpSize,
              f.known[f.linear % kWarpSize], shared};
  const uintptr_t q = reinterpret_cast<uintptr_t>(p);
  const int64_t off = int64_t(q - reinterpret_cast<uintptr_t>(b.base));
  for (uintptr_t g = (q - region_lo) / kGranule; g <= (q + size - 1 - region_lo) / kGranule; ++g)
    check_cell(me, shadow[g], b, off, a);
}

void set_bits(std::vector<uint64_t>& bits, size_t g0, size_t g1) {
  for (size_t g = g0; g <= g1; ++g) bits[g >> 6] |= uint64_t(1) << (g & 63);
}

Region& region_of(LaunchState& L, const BufferRef& b, const void* p) {
  if (b.launch == L.serial && b.slot >= 0 && size_t(b.slot) < L.slot_region.size())
    return L.regions[size_t(L.slot_region[size_t(b.slot)])];
  const uintptr_t q = reinterpret_cast<uintptr_t>(p);
  for (Region& r : L.regions)
    if (q >= r.lo && q < r.hi) return r;
  throw Error(who() + ": " + "accesses " + buffer_name(b) +
              ", which is not an argument of this launch (checked pointers reach a kernel as its "
              "arguments)");
}

}  // namespace

void track(const BufferRef& b, const void* p, size_t size, Access a) {
  const bool check = racecheck_flag().load(std::memory_order_relaxed) != 0;
  if (b.flags & BufferRef::kShared) {
    if (!check) return;
    MemThread& m = mt();
    Cell* shadow;
    if (b.slot == 0) {
      if (m.dyn_shadow_cells * kGranule < m.dyn_bytes) {
        m.dyn_shadow_cells = size_t((m.dyn_bytes + kGranule - 1) / kGranule);
        m.dyn_shadow = new_shadow(m.dyn_shadow_cells);
      }
      shadow = m.dyn_shadow.get();
    } else {
      shadow = m.statics[size_t(b.slot - 1)].shadow.get();
    }
    check_cells(shadow, reinterpret_cast<uintptr_t>(b.base), b, p, size, a, true);
    return;
  }
  LaunchState& L = mt().launch;
  Region& r = region_of(L, b, p);
  const uintptr_t q = reinterpret_cast<uintptr_t>(p);
  const size_t g0 = (q - r.lo) / kGranule, g1 = (q + size - 1 - r.lo) / kGranule;
  if (r.read_bits.empty()) {
    r.read_bits.assign((r.cells() + 63) / 64, 0);
    r.write_bits.assign((r.cells() + 63) / 64, 0);
  }
  if (a != Access::kWrite) {
    L.bytes_read += size;
    set_bits(r.read_bits, g0, g1);
  }
  if (a != Access::kRead) {
    L.bytes_written += size;
    set_bits(r.write_bits, g0, g1);
  }
  if (check && r.writable) {
    if (!r.shadow) r.shadow = new_shadow(r.cells());
    check_cells(r.shadow.get(), r.lo, b, p, size, a, false);
  }
}

// ---- hooks of the scheduler -----------------------------------------------------------------------------
bool racecheck_on() { return racecheck_flag().load(std::memory_order_relaxed) != 0; }

void mem_launch_begin(const char* kernel, size_t smem) {
  MemThread& m = mt();
  LaunchState& L = m.launch;
  L = LaunchState{};
  L.active = true;
  L.kernel = kernel;
  L.serial = m.pending_serial;
  L.start_epoch = m.epochs + 1;
  L.captured.swap(m.pending);
  m.pending.clear();
  m.dyn_bytes = smem;
  // Regions: the captured buffers, overlapping ones merged.
  std::vector<int> order;
  for (size_t i = 0; i < L.captured.size(); ++i) order.push_back(int(i));
  std::sort(order.begin(), order.end(), [&](int x, int y) { return L.captured[x].base < L.captured[y].base; });
  L.slot_region.assign(L.captured.size(), -1);
  for (int i : order) {
    const Captured& c = L.captured[size_t(i)];
    const uintptr_t lo = reinterpret_cast<uintptr_t>(c.base), hi = lo + uintptr_t(c.bytes);
    if (L.regions.empty() || lo >= L.regions.back().hi) {
      L.regions.emplace_back();
      L.regions.back().lo = lo;
      L.regions.back().hi = hi;
    }
    Region& r = L.regions.back();
    r.hi = std::max(r.hi, hi);
    r.writable = r.writable || (c.flags & BufferRef::kWritable);
    L.slot_region[size_t(i)] = int(L.regions.size() - 1);
  }
}

void mem_launch_end(bool ok) {
  MemThread& m = mt();
  LaunchState& L = m.launch;
  if (!L.active) return;
  L.active = false;
  KernelCounters k;
  k.launches = 1;
  k.blocks = L.blocks;
  k.bytes_read = L.bytes_read;
  k.bytes_written = L.bytes_written;
  for (const Region& r : L.regions) {
    for (uint64_t w : r.read_bits) k.unique_bytes_read += uint64_t(__builtin_popcountll(w)) * kGranule;
    for (uint64_t w : r.write_bits) k.unique_bytes_written += uint64_t(__builtin_popcountll(w)) * kGranule;
  }
  add_counters(L.kernel, k);
  std::string error;
  if (ok) {  // every output written in full
    std::vector<std::pair<const unsigned char*, int64_t>> seen;
    for (size_t i = 0; i < L.captured.size() && error.empty(); ++i) {
      const Captured& c = L.captured[i];
      if (!(c.flags & BufferRef::kWriteAll) || c.bytes == 0) continue;
      if (std::find(seen.begin(), seen.end(), std::make_pair(c.base, c.bytes)) != seen.end()) continue;
      seen.emplace_back(c.base, c.bytes);
      const Region& r = L.regions[size_t(L.slot_region[i])];
      const size_t g0 = (reinterpret_cast<uintptr_t>(c.base) - r.lo) / kGranule;
      const size_t g1 = g0 + size_t((c.bytes + kGranule - 1) / kGranule);
      size_t missing = 0, first = 0;
      for (size_t g = g0; g < g1; ++g)
        if (r.write_bits.empty() || !(r.write_bits[g >> 6] >> (g & 63) & 1u))
          if (missing++ == 0) first = g;
      if (missing == 0) continue;
      const int64_t per = std::max<int64_t>(1, c.elem / kGranule);
      std::ostringstream o;
      o << "dmm-emu: kernel '" << L.kernel << "' left " << (missing + per - 1) / per << " of "
        << c.bytes / c.elem << " elements of its output '" << (c.name != nullptr ? c.name : "?")
        << "' unwritten (the first: element " << int64_t(first - g0) * kGranule / c.elem
        << "); an output must be written in full by the launch (its unwritten elements hold NaN)";
      error = o.str();
    }
  }
  L.regions.clear();
  L.captured.clear();
  if (!error.empty()) throw Error(error);
}

void mem_block_begin(Block& b) {
  MemThread& m = mt();
  b.serial = ++m.block_serials;
  b.start_epoch = b.epoch = ++m.epochs;
  ++m.launch.blocks;
  if (racecheck_on()) {
    for (Fiber& f : b.fibers) std::memset(f.known, 0, sizeof f.known);
    std::fill(b.warp_gen.begin(), b.warp_gen.end(), 0u);
  }
}

void mem_barrier(Block& b) {
  b.epoch = ++mt().epochs;
  if (racecheck_on()) {
    for (Fiber& f : b.fibers) std::memset(f.known, 0, sizeof f.known);
    std::fill(b.warp_gen.begin(), b.warp_gen.end(), 0u);
  }
}

void mem_warp_sync(Block& b, int w, unsigned mask) {
  if (!racecheck_on()) return;
  const uint32_t g = ++b.warp_gen[size_t(w)];
  Fiber* lanes = &b.fibers[size_t(w) * kWarpSize];
  const int n = std::min(kWarpSize, b.n() - w * kWarpSize);
  uint32_t joined[kWarpSize] = {};
  for (int l = 0; l < n; ++l)
    if (mask >> l & 1u)
      for (int q = 0; q < kWarpSize; ++q) joined[q] = std::max(joined[q], lanes[l].known[q]);
  for (int q = 0; q < kWarpSize; ++q)
    if (mask >> q & 1u) joined[q] = g;
  for (int l = 0; l < n; ++l)
    if (mask >> l & 1u) std::memcpy(lanes[l].known, joined, sizeof joined);
}

}  // namespace detail

void set_racecheck(bool on) { detail::racecheck_flag().store(on ? 1 : 0); }
bool racecheck() { return detail::racecheck_on(); }

std::vector<std::pair<std::string, KernelCounters>> kernel_counters() {
  const std::lock_guard<std::mutex> lock(detail::counters_mutex());
  return {detail::counters_map().begin(), detail::counters_map().end()};
}
void reset_kernel_counters() {
  const std::lock_guard<std::mutex> lock(detail::counters_mutex());
  detail::counters_map().clear();
}

}  // namespace emu
}  // namespace dmm
