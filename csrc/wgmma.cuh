// Warpgroup MMA (wgmma, sm_90a) for the kernels' opt-in products (DEBERTA_FAST_CUDA_MMA=wgmma: forward, dK/dV, dQ),
// float16 / bfloat16, head dim 64. Its instructions exist only where nvcc targets sm_90a (__CUDA_ARCH_FEAT_SM90_ALL:
// TORCH_CUDA_ARCH_LIST naming 9.0a; kWgmmaCompiled); elsewhere the kernels keep mma.sync.
//
// The operands in shared memory are the kernels' own swizzled tiles (tile.cuh SmemLayout<T, 64>): rows of 64
// elements (128 bytes), the 16-byte chunk c of row r stored at chunk c ^ (r & 7). From a 1024-byte aligned base
// that is the 128-byte swizzle of the wgmma matrix descriptors (byte-address bits [4, 7) XOR bits [7, 10)), so the
// tiles need no copy or re-layout:
//   - the operands of S = Q K^T, dP = dO V^T (and, in dK/dV, S^T = K Q^T, dP^T = V dO^T) are K-major (the reduction
//     dim contiguous): a descriptor per 16-wide k-step starts 32 bytes further into the rows; 8-row groups 1024
//     bytes apart (stride offset);
//   - the B of O += P V, dQ += dS K, dV += P^T dO, dK += dS^T Q (V, K, dO, Q [rows][64] with the rows the reduction
//     dim) is MN-major (the output dim contiguous, "transposed" B): a k-step is 16 rows, 2048 bytes further; 8-row
//     groups 1024 bytes apart. Its one 64-wide atom along the output dim leaves the leading offset unused; it is set
//     to the same 1024 bytes.
// Accumulators (m64nNk16, fp32): warp w of the warpgroup holds rows 16 w .. 16 w + 15, and within it the mma.sync
// m16n8 layout per 8 columns (tile.cuh), so the score code sees a warp's tile exactly as with mma.sync (MF = 1).
// A from registers (P of O += P V, dS, P^T, dS^T) has the mma.sync m16n8k16 A fragment layout per warp.
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

// d[64 x 64] += A[64 x 16] B[16 x 64]: A and B K-major in shared memory (descriptors).
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b) {
  if constexpr (WgmmaType<T>::kBf16) {
    DF_WGMMA_ASM(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " DF_WGMMA_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
        : DF_WGMMA_OUT(d)
        : "l"(desc_a), "l"(desc_b), "r"(1));
  } else {
    DF_WGMMA_ASM(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " DF_WGMMA_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
        : DF_WGMMA_OUT(d)
        : "l"(desc_a), "l"(desc_b), "r"(1));
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

// The kernels' two kinds of product on 64 x 64 tiles [rows][64] of shared memory, for the warpgroup holding the
// 64 accumulator rows (each warp its 16, in the accumulator layout with MF = 1), as WarpGemm's nt and rn with
// MF = 1, NF = 8 (tile.cuh), accumulating:
//   nt: acc += A . B^T, A and B K-major (S = Q K^T, dP = dO V^T; S^T = K Q^T, dP^T = V dO^T), 4 k-steps of 16;
//   rn: acc += P . B, P [64 x 64] from registers (this warp's 16 rows, packed to T here) and B [64 k][64 n]
//       MN-major (O += P V, dQ += dS K; dV += P^T dO, dK += dS^T Q), 4 k-steps of 16 rows.
template <typename T>
struct WarpgroupGemm64 {
  __device__ static __forceinline__ void nt(float (&acc)[8][4], const T* sA, const T* sB) {
    const uint64_t desc_a = wgmma_desc_sw128(sA), desc_b = wgmma_desc_sw128(sB);
    fence_operands(acc);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {  // + 32 bytes a k-step: 2 in the descriptor's 16-byte units
      wgmma_m64n64k16_ss<T>(acc, desc_a + 2 * ks, desc_b + 2 * ks);
    }
    wgmma_commit();
    wgmma_wait_all();
    fence_operands(acc);
  }
  __device__ static __forceinline__ void rn(float (&acc)[8][4], const float (&p)[8][4], const T* sB) {
    const uint64_t desc_b = wgmma_desc_sw128(sB);
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
    for (int kq = 0; kq < 4; ++kq) {  // + 16 rows = 2048 bytes a k-step: 128 units
      wgmma_m64n64k16_rs_tb<T>(acc, a[kq], desc_b + 128 * kq);
    }
    wgmma_commit();
    wgmma_wait_all();
    fence_operands(acc);
  }
};

// A kernel's products: WarpGemm's (mma.sync, or the float32 SIMT path) or, with kWgmma, WarpgroupGemm64's (whose
// warpgroup holds the 64 rows from row a_row0 rounded down to 64 of the left tile). The same contracts: nt adds
// A[a_row0 .., :] B^T into acc, rn adds P B.
template <typename T, int D, bool kWgmma>
struct KernelGemm {
  template <int MF, int NF>
  __device__ static __forceinline__ void nt(float (&acc)[MF][NF][4], const T* sA, int a_row0, const T* sB) {
    if constexpr (kWgmma) {
      WarpgroupGemm64<T>::nt(acc[0], sA + (a_row0 / 64) * 64 * D, sB);
    } else {
      WarpGemm<T, D>::template nt<MF, NF>(acc, sA, a_row0, sB, 0);
    }
  }
  template <int MF, int NF>
  __device__ static __forceinline__ void rn(float (&acc)[MF][D / 8][4], const float (&p)[MF][NF][4], const T* sB) {
    if constexpr (kWgmma) {
      WarpgroupGemm64<T>::rn(acc[0], p[0], sB);
    } else {
      WarpGemm<T, D>::template rn<MF, NF>(acc, p, sB, 0);
    }
  }
};

}  // namespace deberta_fast
