// Warp-level building blocks of the attention kernels: swizzled shared-memory tiles, cp.async loads,
// ldmatrix + mma.sync (m16n8k16, fp32 accumulation) for float16 / bfloat16, and a SIMT float32 path
// that produces the same accumulator layout, so every kernel is written once for all three dtypes.
//
// Accumulator layout (mma.sync m16n8, per warp): a tile [16 * MF rows, 8 * NF cols] is held as
// acc[MF][NF][4]; with g = lane / 4 and t = lane % 4, element e of acc[mf][nf] is
//     row mf * 16 + g + 8 * (e >> 1),  col nf * 8 + 2 * t + (e & 1).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

namespace deberta_fast {

// ------------------------------------------------------------------------------------------------------
// Element types.

template <typename T>
struct ElemTraits;

template <>
struct ElemTraits<__half> {
  static constexpr bool kTensorCores = true;
  __device__ static float to_float(__half x) { return __half2float(x); }
  __device__ static __half from_float(float x) { return __float2half_rn(x); }
  __device__ static uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ static void store2(__half* dst, float a, float b) {
    *reinterpret_cast<__half2*>(dst) = __floats2half2_rn(a, b);
  }
};

template <>
struct ElemTraits<__nv_bfloat16> {
  static constexpr bool kTensorCores = true;
  __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  __device__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ static void store2(__nv_bfloat16* dst, float a, float b) {
    *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(a, b);
  }
};

template <>
struct ElemTraits<float> {
  static constexpr bool kTensorCores = false;
  __device__ static float to_float(float x) { return x; }
  __device__ static float from_float(float x) { return x; }
  __device__ static void store2(float* dst, float a, float b) { *reinterpret_cast<float2*>(dst) = make_float2(a, b); }
};

template <typename T>
__device__ __forceinline__ float to_float(T x) {
  return ElemTraits<T>::to_float(x);
}

// Store two adjacent values (an accumulator pair) to global memory in type T.
template <typename T>
__device__ __forceinline__ void store_pair(T* dst, float a, float b) {
  ElemTraits<T>::store2(dst, a, b);
}

// ------------------------------------------------------------------------------------------------------
// Shared-memory tiles [ROWS][D], row-major, with 16-byte chunks XOR-swizzled by row so that eight rows
// read at the same column chunk (ldmatrix, cp.async) hit distinct banks.

template <typename T, int D>
struct SmemLayout {
  static constexpr int kChunkElems = 16 / sizeof(T);
  static constexpr int kChunks = D / kChunkElems;  // per row
  static_assert(D % kChunkElems == 0, "head dim must be a multiple of 16 bytes");
  static_assert(kChunks >= 4, "rows must span at least 64 bytes");

  __host__ __device__ static constexpr int swizzle(int row) { return kChunks >= 8 ? (row & 7) : ((row >> 1) & 3); }
  // Offset (in elements) of element (row, col).
  __host__ __device__ static constexpr int offset(int row, int col) {
    const int chunk = col / kChunkElems;
    return row * D + ((chunk ^ swizzle(row)) * kChunkElems) + (col % kChunkElems);
  }
};

// ------------------------------------------------------------------------------------------------------
// cp.async (sm_80+): 16-byte global -> shared copies, zero-filled when the source row is out of range.

__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem_dst)), "l"(gmem_src),
               "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Rows [row0, row0 + ROWS) of a [N, D] matrix (row stride in elements) into a swizzled tile; rows >= n are zeros.
template <typename T, int ROWS, int D, int kThreads>
__device__ __forceinline__ void load_tile_async(T* smem, const T* gmem, int64_t row_stride, int row0, int n) {
  using L = SmemLayout<T, D>;
  constexpr int kTotal = ROWS * L::kChunks;
#pragma unroll
  for (int it = 0; it < (kTotal + kThreads - 1) / kThreads; ++it) {
    const int idx = it * kThreads + threadIdx.x;
    if (kTotal % kThreads == 0 || idx < kTotal) {
      const int r = idx / L::kChunks;
      const int c = idx % L::kChunks;
      const bool valid = row0 + r < n;
      const T* src = valid ? gmem + (row0 + r) * row_stride + c * L::kChunkElems : gmem;
      cp_async_16(smem + L::offset(r, c * L::kChunkElems), src, valid);
    }
  }
}

// ------------------------------------------------------------------------------------------------------
// Tensor-core primitives (float16 / bfloat16).

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_ptr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_ptr)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_ptr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_ptr)));
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ------------------------------------------------------------------------------------------------------
// Warp GEMMs. Both leave / add results in the accumulator layout.
//
// gemm_nt:  acc[16 MF x 8 NF] += A[a_row0 + (0 .. 16 MF), 0 .. D) . B[b_row0 + (0 .. 8 NF), 0 .. D)^T
//           (A and B swizzled [rows][D] tiles: both operands are row-major along the reduction dim D).
// gemm_rn:  acc[16 MF x D] += P[16 MF x 8 KF] . B[b_row0 + (0 .. 8 KF), 0 .. D)
//           (P: a float accumulator array, e.g. probabilities; B a swizzled [rows][D] tile, rows = reduction).

template <typename T, int D>
struct WarpGemm {
  using L = SmemLayout<T, D>;

  template <int MF, int NF>
  __device__ static __forceinline__ void nt(float (&acc)[MF][NF][4], const T* sA, int a_row0, const T* sB,
                                            int b_row0) {
    static_assert(NF % 2 == 0, "tiles must be multiples of 16 columns");
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t a[MF][4];
#pragma unroll
      for (int mf = 0; mf < MF; ++mf) {
        ldmatrix_x4(a[mf], sA + L::offset(a_row0 + mf * 16 + (lane % 16), ks * 16 + (lane / 16) * 8));
      }
#pragma unroll
      for (int nq = 0; nq < NF / 2; ++nq) {
        uint32_t b[4];
        ldmatrix_x4(b, sB + L::offset(b_row0 + nq * 16 + (lane % 8) + (lane / 16) * 8, ks * 16 + ((lane / 8) % 2) * 8));
#pragma unroll
        for (int mf = 0; mf < MF; ++mf) {
          mma_16816<T>(acc[mf][2 * nq], a[mf], b[0], b[1]);
          mma_16816<T>(acc[mf][2 * nq + 1], a[mf], b[2], b[3]);
        }
      }
    }
  }

  // A fragments of rows a_row0 + (0 .. 16 MF) over all of D, to keep in registers across tiles.
  template <int MF>
  __device__ static __forceinline__ void load_a(uint32_t (&a)[MF][D / 16][4], const T* sA, int a_row0) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks)
#pragma unroll
      for (int mf = 0; mf < MF; ++mf)
        ldmatrix_x4(a[mf][ks], sA + L::offset(a_row0 + mf * 16 + (lane % 16), ks * 16 + (lane / 16) * 8));
  }

  // gemm_nt with A from registers (load_a).
  template <int MF, int NF>
  __device__ static __forceinline__ void nt_areg(float (&acc)[MF][NF][4], const uint32_t (&a)[MF][D / 16][4],
                                                 const T* sB, int b_row0) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
      for (int nq = 0; nq < NF / 2; ++nq) {
        uint32_t b[4];
        ldmatrix_x4(b, sB + L::offset(b_row0 + nq * 16 + (lane % 8) + (lane / 16) * 8, ks * 16 + ((lane / 8) % 2) * 8));
#pragma unroll
        for (int mf = 0; mf < MF; ++mf) {
          mma_16816<T>(acc[mf][2 * nq], a[mf][ks], b[0], b[1]);
          mma_16816<T>(acc[mf][2 * nq + 1], a[mf][ks], b[2], b[3]);
        }
      }
    }
  }

  template <int MF, int KF>
  __device__ static __forceinline__ void rn(float (&acc)[MF][D / 8][4], const float (&p)[MF][KF][4], const T* sB,
                                            int b_row0) {
    static_assert(KF % 2 == 0, "tiles must be multiples of 16 rows");
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int kq = 0; kq < KF / 2; ++kq) {
      uint32_t a[MF][4];
#pragma unroll
      for (int mf = 0; mf < MF; ++mf) {
        a[mf][0] = ElemTraits<T>::pack(p[mf][2 * kq][0], p[mf][2 * kq][1]);
        a[mf][1] = ElemTraits<T>::pack(p[mf][2 * kq][2], p[mf][2 * kq][3]);
        a[mf][2] = ElemTraits<T>::pack(p[mf][2 * kq + 1][0], p[mf][2 * kq + 1][1]);
        a[mf][3] = ElemTraits<T>::pack(p[mf][2 * kq + 1][2], p[mf][2 * kq + 1][3]);
      }
#pragma unroll
      for (int dq = 0; dq < D / 16; ++dq) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, sB + L::offset(b_row0 + kq * 16 + (lane % 8) + ((lane / 8) % 2) * 8, dq * 16 + (lane / 16) * 8));
#pragma unroll
        for (int mf = 0; mf < MF; ++mf) {
          mma_16816<T>(acc[mf][2 * dq], a[mf], b[0], b[1]);
          mma_16816<T>(acc[mf][2 * dq + 1], a[mf], b[2], b[3]);
        }
      }
    }
  }
};

// float32: the same contracts on CUDA cores (exact fp32 products, fp32 sums).
template <int D>
struct WarpGemm<float, D> {
  using L = SmemLayout<float, D>;

  template <int MF, int NF>
  __device__ static __forceinline__ void nt(float (&acc)[MF][NF][4], const float* sA, int a_row0, const float* sB,
                                            int b_row0) {
    const int lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
#pragma unroll 2
    for (int kc = 0; kc < D / 4; ++kc) {
      float4 a[MF][2];
#pragma unroll
      for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          a[mf][hh] = *reinterpret_cast<const float4*>(sA + L::offset(a_row0 + mf * 16 + g + 8 * hh, kc * 4));
        }
      }
#pragma unroll
      for (int nf = 0; nf < NF; ++nf) {
        float4 b[2];
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          b[c] = *reinterpret_cast<const float4*>(sB + L::offset(b_row0 + nf * 8 + 2 * t + c, kc * 4));
        }
#pragma unroll
        for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float4& x = a[mf][e >> 1];
            const float4& y = b[e & 1];
            float s = acc[mf][nf][e];
            s = fmaf(x.x, y.x, s);
            s = fmaf(x.y, y.y, s);
            s = fmaf(x.z, y.z, s);
            s = fmaf(x.w, y.w, s);
            acc[mf][nf][e] = s;
          }
        }
      }
    }
  }

  template <int MF, int KF>
  __device__ static __forceinline__ void rn(float (&acc)[MF][D / 8][4], const float (&p)[MF][KF][4],
                                            const float* sB, int b_row0) {
    const int lane = threadIdx.x % 32;
    const int t = lane % 4;
    const int quad = lane & ~3;
#pragma unroll
    for (int kb = 0; kb < KF; ++kb) {
      // Rows g and g + 8 of P over the 8 reduction indices of block kb, gathered from the quad.
      float lo[MF][8], hi[MF][8];
#pragma unroll
      for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
          lo[mf][kk] = __shfl_sync(0xffffffffu, p[mf][kb][kk & 1], quad | (kk >> 1));
          hi[mf][kk] = __shfl_sync(0xffffffffu, p[mf][kb][2 + (kk & 1)], quad | (kk >> 1));
        }
      }
#pragma unroll
      for (int df = 0; df < D / 8; ++df) {
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
          const float2 b = *reinterpret_cast<const float2*>(sB + L::offset(b_row0 + kb * 8 + kk, df * 8 + 2 * t));
#pragma unroll
          for (int mf = 0; mf < MF; ++mf) {
            acc[mf][df][0] = fmaf(lo[mf][kk], b.x, acc[mf][df][0]);
            acc[mf][df][1] = fmaf(lo[mf][kk], b.y, acc[mf][df][1]);
            acc[mf][df][2] = fmaf(hi[mf][kk], b.x, acc[mf][df][2]);
            acc[mf][df][3] = fmaf(hi[mf][kk], b.y, acc[mf][df][3]);
          }
        }
      }
    }
  }
};

// ------------------------------------------------------------------------------------------------------
// Small helpers.

template <int MF, int NF>
__device__ __forceinline__ void zero(float (&acc)[MF][NF][4]) {
#pragma unroll
  for (int mf = 0; mf < MF; ++mf)
#pragma unroll
    for (int nf = 0; nf < NF; ++nf)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mf][nf][e] = 0.f;
}

// Sum over the four lanes of a quad (the lanes holding one accumulator row).
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return x;
}

}  // namespace deberta_fast
