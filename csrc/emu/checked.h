// Checked device memory of the emulator: what `gptr<T>`, `sptr<T>`, `InPtr` and `OutPtr` of
// csrc/cuda/device.cuh are under DMM_CUDA_EMULATION (under nvcc they are plain pointers).
//
// A checked pointer carries its buffer (first byte, extent, name, permissions). Every element
// access through it is checked against the buffer's bounds and alignment, in every emulated build,
// and reported to the runtime (memcheck.cpp), which counts global-memory bytes per kernel, records
// which output bytes a launch wrote, and, with the race check on, keeps the happens-before shadow of
// shared and global memory. A bad access throws dmm::emu::Error naming the kernel, block, thread
// and buffer.
//
// Global buffers enter a launch as kernel arguments: while DMM_LAUNCH copies the arguments, every
// BufferRef copied is captured (its copy constructor reports it), so the runtime knows all buffers
// of the launch, and which of them alias, before a thread runs.
#pragma once

#ifndef DMM_CUDA_EMULATION
#error "emu/checked.h is part of the CPU emulation of CUDA: define DMM_CUDA_EMULATION"
#endif

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "emu/cuda_emu.h"

namespace dmm {
namespace emu {

enum class Space : uint8_t { kGlobal, kShared };
enum class Access : uint8_t { kRead, kWrite, kAtomic };

// What a checked pointer knows of the buffer it points into.
struct BufferRef {
  enum Flags : uint8_t {
    kWritable = 1,  // writes allowed (OutPtr, gptr<T> with non-const T, shared memory)
    kWriteAll = 2,  // an output: the launch must write every byte of it
    kShared = 4,    // shared memory (else global)
  };
  const unsigned char* base = nullptr;  // first byte
  int64_t bytes = 0;                    // extent
  const char* name = nullptr;           // for messages
  uint8_t flags = 0;
  uint8_t elem = 1;   // element size in bytes (messages and output checks)
  uint8_t align = 1;  // guaranteed alignment of `base` on the GPU (shared memory)
  int32_t slot = -1;  // global: capture index in launch `launch`; shared: region id
  uint64_t launch = 0;

  BufferRef() = default;
  BufferRef(const void* b, int64_t n, const char* nm, uint8_t f, uint8_t e, uint8_t a = 1)
      : base(static_cast<const unsigned char*>(b)), bytes(n), name(nm), flags(f), elem(e), align(a) {}
  // A copy made while DMM_LAUNCH stores the kernel arguments registers the buffer with the launch.
  BufferRef(const BufferRef& o) noexcept { copy_from(o); }
  BufferRef& operator=(const BufferRef& o) noexcept {
    copy_from(o);
    return *this;
  }

 private:
  void copy_from(const BufferRef& o) noexcept;
};

namespace detail {

// Set while DMM_LAUNCH copies a launch's arguments; then every BufferRef copied is captured.
inline thread_local bool tls_capturing = false;
// True while a kernel thread runs (accesses are counted and race-checked only then).
inline thread_local bool tls_in_kernel = false;

void capture(BufferRef& b) noexcept;
// The launch begins / ends capturing its arguments (DMM_LAUNCH).
void begin_capture();
void end_capture();

// Out of line: an access outside the buffer, misaligned, or through an absent / read-only pointer.
[[noreturn]] void bad_access(const BufferRef& b, const void* p, size_t size, Access a);
// Out of line: counting, output coverage and the race check of one in-bounds access.
void track(const BufferRef& b, const void* p, size_t size, Access a);

// p + k elements, without C++ pointer arithmetic (no undefined behaviour for views outside the
// buffer or of an absent one: the access, not the view, is what gets checked).
template <typename T>
T* advance(T* p, int64_t k) {
  constexpr int64_t size = std::is_void_v<T> ? 1 : int64_t(sizeof(std::conditional_t<std::is_void_v<T>, char, T>));
  return reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(p) + uintptr_t(k * size));
}

inline void check(const BufferRef& b, const void* p, size_t size, Access a) {
  const uintptr_t q = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(b.base);
  const bool pow2 = (size & (size - 1)) == 0;  // natural alignment, as the GPU requires
  if (b.base == nullptr || q < lo || q + size > lo + uint64_t(b.bytes) ||
      (pow2 && ((q & (size - 1)) != 0 || ((b.flags & BufferRef::kShared) && size > b.align))) ||
      (a != Access::kRead && !(b.flags & BufferRef::kWritable))) [[unlikely]]
    bad_access(b, p, size, a);
  if (tls_in_kernel) track(b, p, size, a);
}

// The launch's dynamic shared memory (bytes requested at launch).
BufferRef dynamic_smem_ref();
// A static shared array of the running block: NaN-filled at its first use in each block.
BufferRef static_smem_ref(void* storage, size_t bytes, const char* name, uint8_t elem, uint8_t align);

}  // namespace detail

inline void BufferRef::copy_from(const BufferRef& o) noexcept {
  base = o.base;
  bytes = o.bytes;
  name = o.name;
  flags = o.flags;
  elem = o.elem;
  align = o.align;
  slot = o.slot;
  launch = o.launch;
  if (detail::tls_capturing && base != nullptr && !(flags & kShared)) detail::capture(*this);
}

template <typename T, Space S>
class Ptr;

// An element of a writable buffer: reads and writes through it are checked and recorded. Convert it
// to T (`T x = p[i]`), assign a T, or use `+=`, `-=`, `*=`, `/=` (a read, then a write: not atomic).
// Do not keep it in `auto` (it would read on every use): write the element type.
template <typename T, Space S>
class Ref {
 public:
  Ref(T* p, const BufferRef& b) : p_(p), b_(b) {}
  Ref(const Ref&) = default;

  T get() const {
    detail::check(b_, p_, sizeof(T), Access::kRead);
    return *p_;
  }
  operator T() const { return get(); }
  // __half / __nv_bfloat16 elements convert on to float, as on the GPU.
  template <typename U = T, std::enable_if_t<std::is_class_v<U> && std::is_convertible_v<U, float>, int> = 0>
  operator float() const {
    return float(get());
  }
  T operator=(const T& v) const {
    detail::check(b_, p_, sizeof(T), Access::kWrite);
    *p_ = v;
    return v;
  }
  T operator=(const Ref& o) const { return *this = o.get(); }
  template <typename V>
  T operator+=(const V& v) const { return *this = T(get() + v); }
  template <typename V>
  T operator-=(const V& v) const { return *this = T(get() - v); }
  template <typename V>
  T operator*=(const V& v) const { return *this = T(get() * v); }
  template <typename V>
  T operator/=(const V& v) const { return *this = T(get() / v); }

 private:
  T* p_;
  BufferRef b_;
};

// A checked pointer into global (S = kGlobal) or shared (S = kShared) memory.
template <typename T, Space S>
class Ptr {
 public:
  using element_type = T;
  Ptr() = default;
  Ptr(std::nullptr_t) {}
  Ptr(T* p, const BufferRef& b) : p_(p), b_(b) {}
  template <typename U, std::enable_if_t<std::is_convertible_v<U*, T*> && !std::is_same_v<U, T>, int> = 0>
  Ptr(const Ptr<U, S>& o) : p_(o.raw()), b_(o.buffer()) {}

  // Read-only element type: the value; writable: a Ref.
  auto operator[](int64_t i) const {
    if constexpr (std::is_const_v<T>) {
      const T* q = detail::advance(p_, i);
      detail::check(b_, q, sizeof(T), Access::kRead);
      return std::remove_const_t<T>(*q);
    } else {
      return Ref<T, S>(detail::advance(p_, i), b_);
    }
  }
  auto operator*() const { return (*this)[0]; }

  Ptr operator+(int64_t k) const { return Ptr(detail::advance(p_, k), b_); }
  Ptr operator-(int64_t k) const { return Ptr(detail::advance(p_, -k), b_); }
  Ptr& operator+=(int64_t k) {
    p_ = detail::advance(p_, k);
    return *this;
  }
  Ptr& operator-=(int64_t k) {
    p_ = detail::advance(p_, -k);
    return *this;
  }
  Ptr& operator++() { return *this += 1; }
  Ptr& operator--() { return *this -= 1; }
  int64_t operator-(const Ptr& o) const {
    return (int64_t(reinterpret_cast<uintptr_t>(p_)) - int64_t(reinterpret_cast<uintptr_t>(o.p_))) /
           int64_t(sizeof(T));
  }
  explicit operator bool() const { return p_ != nullptr; }
  friend bool operator==(const Ptr& a, std::nullptr_t) { return a.p_ == nullptr; }
  friend bool operator!=(const Ptr& a, std::nullptr_t) { return a.p_ != nullptr; }
  friend bool operator==(const Ptr& a, const Ptr& b) { return a.p_ == b.p_; }
  friend bool operator!=(const Ptr& a, const Ptr& b) { return a.p_ != b.p_; }

  // The emulator's view (atomics, vector access, casts).
  T* raw() const { return p_; }
  const BufferRef& buffer() const { return b_; }

 private:
  T* p_ = nullptr;
  BufferRef b_;
};

// Type-erased (`gptr<void>`): no element access; ptr_cast<U> gives a typed view.
template <Space S>
class Ptr<void, S> {
 public:
  Ptr() = default;
  Ptr(std::nullptr_t) {}
  Ptr(void* p, const BufferRef& b) : p_(p), b_(b) {}
  explicit operator bool() const { return p_ != nullptr; }
  friend bool operator==(const Ptr& a, std::nullptr_t) { return a.p_ == nullptr; }
  friend bool operator!=(const Ptr& a, std::nullptr_t) { return a.p_ != nullptr; }
  void* raw() const { return p_; }
  const BufferRef& buffer() const { return b_; }

 private:
  void* p_ = nullptr;
  BufferRef b_;
};

// The same bytes seen as elements of U (reports then count in U's elements).
template <typename U, typename T, Space S>
Ptr<U, S> ptr_cast(const Ptr<T, S>& p) {
  BufferRef b = p.buffer();
  if constexpr (!std::is_void_v<U>) b.elem = uint8_t(sizeof(U));
  return Ptr<U, S>(reinterpret_cast<U*>(reinterpret_cast<uintptr_t>(p.raw())), b);
}

// Several consecutive elements as one access (V: a vector type of the element type).
template <typename V, typename T, Space S>
V load_block(const Ptr<T, S>& p, int64_t i) {
  const auto* q = reinterpret_cast<const V*>(detail::advance(p.raw(), i));
  detail::check(p.buffer(), q, sizeof(V), Access::kRead);
  return *q;
}
template <typename V, typename T, Space S>
void store_block(const Ptr<T, S>& p, int64_t i, const V& v) {
  auto* q = reinterpret_cast<V*>(detail::advance(p.raw(), i));
  detail::check(p.buffer(), q, sizeof(V), Access::kWrite);
  *q = v;
}

// Atomics through checked pointers (found by argument-dependent lookup next to the raw-pointer
// overloads of cuda_emu.h): recorded as atomic accesses by the race check.
#define DMM_EMU_CHECKED_ATOMIC(fn)                                                 \
  template <typename T, Space S>                                                   \
  T fn(const Ptr<T, S>& p, std::type_identity_t<T> v) {                            \
    detail::check(p.buffer(), p.raw(), sizeof(T), Access::kAtomic);                \
    return ::fn(p.raw(), v);                                                       \
  }
DMM_EMU_CHECKED_ATOMIC(atomicAdd)
DMM_EMU_CHECKED_ATOMIC(atomicSub)
DMM_EMU_CHECKED_ATOMIC(atomicExch)
DMM_EMU_CHECKED_ATOMIC(atomicMax)
DMM_EMU_CHECKED_ATOMIC(atomicMin)
#undef DMM_EMU_CHECKED_ATOMIC
template <typename T, Space S>
T atomicCAS(const Ptr<T, S>& p, std::type_identity_t<T> cmp, std::type_identity_t<T> v) {
  detail::check(p.buffer(), p.raw(), sizeof(T), Access::kAtomic);
  return ::atomicCAS(p.raw(), cmp, v);
}

// ---- construction ------------------------------------------------------------------------------------
// A global buffer of n elements of T (for T = void: n bytes). Non-const T is writable; kWriteAll
// makes it an output every element of which each launch it is passed to must write.
template <typename T>
Ptr<T, Space::kGlobal> global_ptr(T* p, int64_t n, const char* name, bool write_all) {
  int64_t elem = 1;
  if constexpr (!std::is_void_v<T>) elem = int64_t(sizeof(T));
  uint8_t flags = 0;
  if constexpr (!std::is_const_v<T>) flags = BufferRef::kWritable | (write_all ? BufferRef::kWriteAll : 0);
  if (p == nullptr || n == 0) return Ptr<T, Space::kGlobal>();
  return Ptr<T, Space::kGlobal>(p, BufferRef(p, n * elem, name, flags, uint8_t(elem)));
}

template <typename T>
Ptr<T, Space::kShared> dynamic_smem() {
  BufferRef b = detail::dynamic_smem_ref();
  if constexpr (!std::is_void_v<T>) b.elem = uint8_t(sizeof(T));
  return Ptr<T, Space::kShared>(reinterpret_cast<T*>(const_cast<unsigned char*>(b.base)), b);
}

template <typename T, size_t N>
Ptr<T, Space::kShared> static_smem(T (&storage)[N], const char* name, size_t align) {
  return Ptr<T, Space::kShared>(
      storage, detail::static_smem_ref(storage, sizeof(storage), name, uint8_t(sizeof(T)), uint8_t(align)));
}

}  // namespace emu
}  // namespace dmm
