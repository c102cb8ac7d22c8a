// Warpgroup MMA (wgmma, sm_90a) for the forward's opt-in mainloop (DEBERTA_FAST_CUDA_FWD_MMA=wgmma), float16 /
// bfloat16, head dim 64. Its instructions exist only where nvcc targets sm_90a (__CUDA_ARCH_FEAT_SM90_ALL:
// TORCH_CUDA_ARCH_LIST naming 9.0a; kWgmmaCompiled); elsewhere the kernels keep mma.sync.
//
// The operands in shared memory are the kernels' own swizzled tiles (tile.cuh SmemLayout<T, 64>): rows of 64
// elements (128 bytes), the 16-byte chunk c of row r stored at chunk c ^ (r & 7). From a 1024-byte aligned base
// that is the 128-byte swizzle of the wgmma matrix descriptors (byte-address bits [4, 7) XOR bits [7, 10)), so the
// tiles need no copy or re-layout:
//   - Q [rows][64] as A and K [keys][64] as B of S = Q K^T are K-major (the reduction dim contiguous): a descriptor
//     per 16-wide k-step starts 32 bytes further into the rows; 8-row groups 1024 bytes apart (stride offset);
//   - V [keys][64] as B of O += P V is MN-major (the output dim contiguous, "transposed" B): a k-step is 16 keys,
//     2048 bytes further; 8-key groups 1024 bytes apart. Its one 64-wide atom along the output dim leaves the
//     leading offset unused; it is set to the same 1024 bytes.
// Accumulators (m64nNk16, fp32): warp w of the warpgroup holds rows 16 w .. 16 w + 15, and within it the mma.sync
// m16n8 layout per 8 columns (tile.cuh), so the score code sees a warp's tile exactly as with mma.sync (MF = 1).
// A from registers (P of O += P V) has the mma.sync m16n8k16 A fragment layout per warp.
//
// Ordering: tiles written by cp.async need fence_proxy_async() in the writing threads before the barrier that
// publishes them (the tensor cores read through the async proxy); registers written by ordinary instructions
// (accumulators, A fragments) are pinned before wgmma_fence() and after the wait (fence_operands), so that
// the compiler moves no access to them across the asynchronous MMAs.
#pragma once

#include <cstdint>

#include "tile.cuh"

namespace deberta_fast {

// Whether this compilation pass emits wgmma (the device pass for sm_90a). Kernels test it in `if constexpr`; the
// functions below exist in every pass (the host pass parses the kernels too), their instructions only in this one.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DF_WGMMA_ASM(...) asm volatile(__VA_ARGS__)
constexpr bool kWgmmaCompiled = true;
#else
#define DF_WGMMA_ASM(...) \
  do {                     \
  } while (0)
constexpr bool kWgmmaCompiled = false;
#endif

// The tiles' layout is the 128-byte swizzle (from a 1024-byte aligned base): byte (row, chunk) of a 64-wide 16-bit
// tile at row * 128 + (chunk ^ (row % 8)) * 16, checked for every row and chunk of a swizzle atom.
template <typename T>
constexpr bool swizzled_like_sw128() {
  for (int row = 0; row < 16; ++row)
    for (int chunk = 0; chunk < 8; ++chunk)
      if (SmemLayout<T, 64>::offset(row, chunk * 8) * 2 != row * 128 + (chunk ^ (row % 8)) * 16) return false;
  return true;
}
static_assert(swizzled_like_sw128<__half>() && swizzled_like_sw128<__nv_bfloat16>(),
              "tile.cuh's SmemLayout<T, 64> must stay the wgmma descriptors' 128-byte swizzle");

// Descriptor of a 128-byte-swizzled operand whose 8-row groups are 1024 bytes apart, starting at smem_ptr.
__device__ __forceinline__ uint64_t wgmma_desc_sw128(const void* smem_ptr) {
  const uint64_t addr = smem_u32(smem_ptr);
  constexpr uint64_t kGroupBytes = 1024;
  uint64_t desc = (addr & 0x3FFFF) >> 4;  // bits 0-13: start address / 16
  desc |= (kGroupBytes >> 4) << 16;       // bits 16-29: leading byte offset / 16
  desc |= (kGroupBytes >> 4) << 32;       // bits 32-45: stride byte offset / 16
  desc |= uint64_t(1) << 62;              // bits 62-63: 128-byte swizzle
  return desc;
}

__device__ __forceinline__ void fence_proxy_async() { DF_WGMMA_ASM("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { DF_WGMMA_ASM("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { DF_WGMMA_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { DF_WGMMA_ASM("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

// Pin registers: no access to them moves across this point.
template <int NF>
__device__ __forceinline__ void fence_operands(float (&d)[NF][4]) {
#pragma unroll
  for (int nf = 0; nf < NF; ++nf)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[nf][e])::"memory");
}
__device__ __forceinline__ void fence_operands(uint32_t (&a)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

template <typename T>
struct WgmmaType;
template <>
struct WgmmaType<__half> {
  static constexpr bool kBf16 = false;
};
template <>
struct WgmmaType<__nv_bfloat16> {
  static constexpr bool kBf16 = true;
};

#define DF_WGMMA_D32                                                                                          \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define DF_WGMMA_OUT(d)                                                                                     \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),    \
      "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), \
      "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), \
      "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), \
      "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])

// d[64 x 64] (= or +=, accumulate) A[64 x 16] B[16 x 64]: A and B K-major in shared memory (descriptors).
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b,
                                                   bool accumulate) {
  if constexpr (WgmmaType<T>::kBf16) {
    DF_WGMMA_ASM(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " DF_WGMMA_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
        : DF_WGMMA_OUT(d)
        : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
  } else {
    DF_WGMMA_ASM(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " DF_WGMMA_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
        : DF_WGMMA_OUT(d)
        : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
  }
}

// d[64 x 64] += A[64 x 16] B[16 x 64]: A from registers (this warp's 16 rows, the mma.sync A fragment), B
// MN-major in shared memory (descriptor).
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16_rs_tb(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b) {
  if constexpr (WgmmaType<T>::kBf16) {
    DF_WGMMA_ASM(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " DF_WGMMA_D32
        ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : DF_WGMMA_OUT(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
  } else {
    DF_WGMMA_ASM(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " DF_WGMMA_D32
        ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : DF_WGMMA_OUT(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
  }
}

#undef DF_WGMMA_D32
#undef DF_WGMMA_OUT
#undef DF_WGMMA_ASM

// The forward's two products for one key tile, per warpgroup (a warp's part in the accumulator layout, MF = 1).
template <typename T>
struct WarpgroupGemm64 {
  // s = Q[q_rows: 64 rows of this warpgroup] . K[64 keys]^T over D = 64 (4 k-steps).
  __device__ static __forceinline__ void qk(float (&s)[8][4], const T* sQ_group, const T* sK) {
    const uint64_t desc_q = wgmma_desc_sw128(sQ_group), desc_k = wgmma_desc_sw128(sK);
    fence_operands(s);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {  // + 32 bytes a k-step: 2 in the descriptor's 16-byte units
      wgmma_m64n64k16_ss<T>(s, desc_q + 2 * ks, desc_k + 2 * ks, ks > 0);
    }
    wgmma_commit();
    wgmma_wait_all();
    fence_operands(s);
  }
  // acc += P[this warp's 16 rows x 64 keys] . V[64 keys][64] (4 k-steps of 16 keys). p: probabilities in the
  // accumulator layout, packed to T here.
  __device__ static __forceinline__ void pv(float (&acc)[8][4], const float (&p)[8][4], const T* sV) {
    const uint64_t desc_v = wgmma_desc_sw128(sV);
    uint32_t a[4][4];
#pragma unroll
    for (int kq = 0; kq < 4; ++kq) {
      a[kq][0] = ElemTraits<T>::pack(p[2 * kq][0], p[2 * kq][1]);
      a[kq][1] = ElemTraits<T>::pack(p[2 * kq][2], p[2 * kq][3]);
      a[kq][2] = ElemTraits<T>::pack(p[2 * kq + 1][0], p[2 * kq + 1][1]);
      a[kq][3] = ElemTraits<T>::pack(p[2 * kq + 1][2], p[2 * kq + 1][3]);
      fence_operands(a[kq]);
    }
    fence_operands(acc);
    wgmma_fence();
#pragma unroll
    for (int kq = 0; kq < 4; ++kq) {  // + 16 keys = 2048 bytes a k-step: 128 units
      wgmma_m64n64k16_rs_tb<T>(acc, a[kq], desc_v + 128 * kq);
    }
    wgmma_commit();
    wgmma_wait_all();
    fence_operands(acc);
  }
};

}  // namespace deberta_fast
