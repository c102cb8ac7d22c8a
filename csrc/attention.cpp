// deberta_fast._C: the torch ops of the CUDA backend of disentangled_attention (schemas, argument checks,
// the host orchestration around the kernels) and a minimal Python module.
//
// Ops (namespace deberta_fast; fake / autograd registrations live in deberta_fast/backends/cuda_backend.py):
//   cuda_attention_fwd(q, k, v, pos_key?, pos_query?, mask?, philox?, buckets, max_rel, scale, dropout_p,
//                      masked_zero) -> (out [B, H, N, D] laid out as [B, N, H, D], lse [B, H, N] float32)
//   cuda_attention_bwd(grad_out, q, k, v, pos_key?, pos_query?, mask?, philox?, out, lse, ...same settings)
//                      -> (dq, dk, dv, dpos_key, dpos_query); an absent position term's gradient is empty
//   cuda_dropout_mask(philox, batch, heads, seq_len, dropout_p) -> bool [B, H, N, N]   (test hook; CPU + CUDA)
//   cuda_position_geometry(like, seq_len, buckets, max_rel) -> (int32 table [2N - 1], r_hi, r_lo, unit_steps)
//     (any device; unit_steps: the whole table's rows step by 0 or 1, which the staged band slabs need)
//   cuda_score_terms(...), cuda_slot_sums(...), cuda_staged_terms(...): score_terms.h's score code on one warp
//                      tile   (test hooks; CPU)
//   cuda_wgmma_probe(a, b, rn) -> a b^T or a b [64, 64] float32 by the kernels' wgmma products (test hook; CUDA)
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "launch.h"
#include "params.h"
#include "philox.h"
#include "score_terms.h"

#define CHECK_SHAPE(x, ...) \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape (" #__VA_ARGS__ "), got ", (x).sizes())

namespace deberta_fast {
namespace {

using at::Tensor;

// Position buffers (C2P / P2C and the backward's band buffers) are built for at most this many bytes at a
// time: larger batches run in slices of whole sequences (as the Triton backend does).
// DEBERTA_FAST_CUDA_CHUNK_BYTES overrides it (tests use it to force slicing).
int64_t chunk_bytes() {
  const char* env = std::getenv("DEBERTA_FAST_CUDA_CHUNK_BYTES");
  if (env != nullptr && *env != '\0') return std::max<int64_t>(1, std::atoll(env));
  return int64_t(1) << 30;
}

// A switch from the environment, read per call as the Triton backend's switches are: the index of its value in
// ``values`` (0 when unset or empty), else an error that names the switch and every value.
int env_choice(const char* name, std::initializer_list<const char*> values) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return 0;
  std::string allowed;
  int index = 0;
  for (const char* value : values) {
    if (std::strcmp(env, value) == 0) return index;
    const bool last = ++index == static_cast<int>(values.size());
    allowed += (index == 1 ? "'" : (last ? " or '" : ", '")) + std::string(value) + "'";
  }
  TORCH_CHECK(false, name, " must be ", allowed, ", got '", env, "'");
  return 0;  // not reached
}

// DEBERTA_FAST_CUDA_BAND=staged: the kernels' band tiles read C2P / P2C from slabs staged in shared memory a tile
// ahead (score_terms.h); unset or "gather": each pair gathers them from global memory.
bool staged_band() { return env_choice("DEBERTA_FAST_CUDA_BAND", {"gather", "staged"}) == 1; }

// DEBERTA_FAST_CUDA_FWD_TILES: the float16 / bfloat16 forward's tiles, "128x64" (unset: FwdConfig, 8 warps),
// "128x32" or "64x64" (4 warps; kernel_traits.h), in FwdTiles' order. Float32 keeps its own.
enum class FwdTiles { k128x64, k128x32, k64x64 };
FwdTiles fwd_tiles() {
  return static_cast<FwdTiles>(env_choice("DEBERTA_FAST_CUDA_FWD_TILES", {"128x64", "128x32", "64x64"}));
}

ElemType elem_type(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf:
      return ElemType::kFloat16;
    case at::kBFloat16:
      return ElemType::kBFloat16;
    case at::kFloat:
      return ElemType::kFloat32;
    default:
      TORCH_CHECK(false, "deberta_fast cuda backend: dtype ", t.scalar_type(),
                  " is not supported (float16, bfloat16 or float32)");
  }
}

bool supported_head_dim(int64_t d) { return std::find(std::begin(kHeadDims), std::end(kHeadDims), d) != std::end(kHeadDims); }

// A [B, H, N, D] operand as the kernels read it: unit last stride, 16-byte aligned rows. Views such as
// [B, N, H, D] transposed pass through without a copy; anything else is made contiguous.
Tensor kernel_operand(const Tensor& t) {
  const int64_t align = 16 / t.element_size();
  bool ok = t.stride(-1) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int dim = 0; ok && dim < t.dim() - 1; ++dim) ok = t.size(dim) == 1 || t.stride(dim) % align == 0;
  if (ok) return t;
  // contiguous() returns a contiguous but misaligned view (a storage offset) unchanged: copy it instead.
  return t.is_contiguous() ? t.clone() : t.contiguous();
}

Tensor unit_last_stride(const Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

void check_operand(const char* name, const Tensor& t, const Tensor& query) {
  TORCH_CHECK(t.is_cuda(), "deberta_fast cuda backend: ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.device() == query.device(), "deberta_fast cuda backend: ", name, " is on ", t.device(),
              " but query is on ", query.device());
  TORCH_CHECK(t.scalar_type() == query.scalar_type(), "deberta_fast cuda backend: ", name, " has dtype ",
              t.scalar_type(), " but query has ", query.scalar_type());
}

// ------------------------------------------------------------------------------------------------------
// The relative-position index, cached per (settings, device): the operations of
// deberta_fast/positions.py (transformers' make_log_bucket_position) in the same dtypes, so the table is
// bit-identical to relative_index_table on the same device (tests compare them), plus the saturation
// distances r_hi, r_lo read back once.

struct Geometry {
  Tensor table;  // int32 [2L - 1], table[x + L - 1] = d(x)
  int64_t length = 0;
  int64_t r_hi = 0, r_lo = 0;
  bool unit_steps = false;  // 0 <= d(x + 1) - d(x) <= 1 for every x of the table
};

Tensor build_table(int64_t length, int64_t buckets, int64_t max_rel, const at::Device& device) {
  const int64_t span = buckets > 0 ? buckets : max_rel;
  const auto opts = at::TensorOptions().device(device);
  Tensor rel = at::arange(-(length - 1), length, opts.dtype(at::kLong));
  Tensor bucket = rel;
  if (buckets > 0 && max_rel > 0) {
    const int64_t mid = buckets / 2;
    Tensor sign = at::sign(rel);
    Tensor abs_pos = at::where(at::logical_and(rel < mid, rel > -mid), at::full_like(rel, mid - 1), rel.abs());
    Tensor denom = at::log(at::scalar_tensor(static_cast<double>(max_rel - 1) / static_cast<double>(mid),
                                             opts.dtype(at::kFloat)));
    Tensor ratio = abs_pos.to(at::kFloat) / mid;
    Tensor log_pos = at::ceil(at::log(ratio) / denom * (mid - 1)) + mid;
    bucket = at::where(abs_pos <= mid, rel.to(at::kFloat), log_pos * sign.to(at::kFloat)).to(at::kLong);
  }
  return (bucket + span).clamp_(0, 2 * span - 1).to(at::kInt);
}

const Geometry& geometry(int64_t seq_len, int64_t buckets, int64_t max_rel, const at::Device& device) {
  static std::mutex mutex;
  static std::map<std::tuple<int64_t, int64_t, int, int, int64_t>, Geometry> cache;
  int64_t length = int64_t(1) << 16;  // covers every |i - j| < 65536 with one table
  while (length < seq_len) length <<= 1;
  const auto key = std::make_tuple(buckets, max_rel, static_cast<int>(device.type()), static_cast<int>(device.index()), length);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  Geometry geo;
  geo.length = length;
  geo.table = build_table(length, buckets, max_rel, device);
  const int64_t span = buckets > 0 ? buckets : max_rel;
  Tensor after = at::arange(1, length + 1, geo.table.options().dtype(at::kLong));
  Tensor pos = geo.table.slice(0, length - 1);           // d(x), x = 0 .. L - 1
  Tensor neg = geo.table.slice(0, 0, length).flip({0});  // d(-x)
  Tensor r_hi = at::where(pos != 2 * span - 1, after, at::zeros_like(after)).max();
  Tensor r_lo = at::where(neg != 0, after, at::zeros_like(after)).max();
  Tensor steps = geo.table.slice(0, 1) - geo.table.slice(0, 0, -1);
  // the one host read per setting and device
  Tensor read = at::stack({r_hi, r_lo, steps.min().to(at::kLong), steps.max().to(at::kLong)}).cpu();
  geo.r_hi = read[0].item<int64_t>();
  geo.r_lo = read[1].item<int64_t>();
  geo.unit_steps = read[2].item<int64_t>() >= 0 && read[3].item<int64_t>() <= 1;
  return cache.emplace(key, std::move(geo)).first->second;
}

struct SeqGeometry {
  Tensor table;  // int32 [2N - 1]
  int64_t r_hi = 0, r_lo = 0;
  bool unit_steps = false;  // 0 <= d(x + 1) - d(x) <= 1 everywhere (the staged band slabs rely on it)
  int64_t width() const { return r_hi + r_lo - 1; }
  // Band slot c (distance c - (r_lo - 1)) -> its row of the position table, int64 [width].
  Tensor band_index(int64_t n) const { return table.slice(0, n - r_lo, n - 1 + r_hi).to(at::kLong); }
};

SeqGeometry seq_geometry(int64_t n, int64_t buckets, int64_t max_rel, const at::Device& device) {
  const Geometry& geo = geometry(n, buckets, max_rel, device);
  SeqGeometry out;
  out.table = geo.table.slice(0, geo.length - n, geo.length + n - 1);
  out.r_hi = std::min(geo.r_hi, n);
  out.r_lo = std::min(geo.r_lo, n);
  out.unit_steps = geo.unit_steps;
  return out;
}

// ------------------------------------------------------------------------------------------------------
// Argument checks and parameters shared by the forward and the backward.

struct Inputs {
  Tensor q, k, v, pos_key, pos_query, mask, philox;
  int64_t B = 0, H = 0, N = 0, D = 0, two_s = 1;
  bool has_c2p = false, has_p2c = false;
  ElemType elem = ElemType::kFloat32;
};

Inputs check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& pos_key,
                    const std::optional<Tensor>& pos_query, const std::optional<Tensor>& mask,
                    const std::optional<Tensor>& philox, int64_t buckets, int64_t max_rel, double dropout_p) {
  Inputs in;
  TORCH_CHECK(q.dim() == 4, "deberta_fast cuda backend: query must be [B, H, N, D], got ", q.sizes());
  check_operand("query", q, q);
  in.elem = elem_type(q);
  in.B = q.size(0), in.H = q.size(1), in.N = q.size(2), in.D = q.size(3);
  TORCH_CHECK(supported_head_dim(in.D), "deberta_fast cuda backend: head dim ", in.D,
              " is not supported (32, 64 or 128)");
  TORCH_CHECK(in.N >= 1 && in.N < (int64_t(1) << 30), "deberta_fast cuda backend: sequence length ", in.N, " out of range");
  TORCH_CHECK(in.B <= 65535 && in.H <= 65535, "deberta_fast cuda backend: batch and heads must be <= 65535");
  check_operand("key", k, q);
  check_operand("value", v, q);
  CHECK_SHAPE(k, in.B, in.H, in.N, in.D);
  CHECK_SHAPE(v, in.B, in.H, in.N, in.D);
  in.q = kernel_operand(q);
  in.k = kernel_operand(k);
  in.v = kernel_operand(v);
  const int64_t span = buckets > 0 ? buckets : max_rel;
  in.two_s = 2 * span;
  if (pos_key.has_value()) {
    check_operand("pos_key", *pos_key, q);
    CHECK_SHAPE(*pos_key, in.H, in.two_s, in.D);
    in.pos_key = unit_last_stride(*pos_key);
    in.has_c2p = true;
  }
  if (pos_query.has_value()) {
    check_operand("pos_query", *pos_query, q);
    CHECK_SHAPE(*pos_query, in.H, in.two_s, in.D);
    in.pos_query = unit_last_stride(*pos_query);
    in.has_p2c = true;
  }
  if (in.has_c2p || in.has_p2c) {
    TORCH_CHECK(max_rel >= 1 && buckets != 1, "deberta_fast cuda backend: invalid position settings (buckets ",
                buckets, ", max_relative_positions ", max_rel, ")");
  }
  if (mask.has_value()) {
    TORCH_CHECK(mask->is_cuda() && mask->device() == q.device(), "deberta_fast cuda backend: attention_mask must be on ",
                q.device());
    TORCH_CHECK(mask->scalar_type() == at::kBool, "deberta_fast cuda backend: attention_mask must be bool, got ",
                mask->scalar_type());
    CHECK_SHAPE(*mask, in.B, in.N);
    in.mask = *mask;
  }
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "deberta_fast cuda backend: dropout_p must be in [0, 1), got ", dropout_p);
  if (dropout_p > 0.0) {
    TORCH_CHECK(philox.has_value(), "deberta_fast cuda backend: dropout_p > 0 needs philox = [seed, offset]");
    TORCH_CHECK(philox->is_cuda() && philox->scalar_type() == at::kLong && philox->numel() == 2,
                "deberta_fast cuda backend: philox must be an int64 CUDA tensor [seed, offset]");
    in.philox = philox->contiguous();
  }
  return in;
}

// The position inputs of one batch slice: the index table and its saturation distances, and the slice's
// [N, 2S] score matrices (each null when absent).
void fill_positions(AttnParams& p, const SeqGeometry& geo, const Tensor& c2p, const Tensor& p2c) {
  if (geo.table.defined()) {
    p.table = geo.table.data_ptr<int32_t>();
    p.r_hi = static_cast<int>(geo.r_hi);
    p.r_lo = static_cast<int>(geo.r_lo);
  }
  if (c2p.defined()) p.c2p = c2p.data_ptr();
  if (p2c.defined()) p.p2c = p2c.data_ptr();
}

// DEBERTA_FAST_CUDA_MMA=wgmma: the float16 / bfloat16 kernels at head dim 64 (the forward on its default 128x64
// tiles, dK/dV, dQ) compute their products by warpgroup MMA (csrc/wgmma.cuh); unset or "mma.sync": by mma.sync.
// Other dtypes and head dims keep their kernels. wgmma needs an extension built for sm_90a
// (TORCH_CUDA_ARCH_LIST=9.0a) on an sm_90 GPU: checked on the device (once) before the first wgmma launch, an error
// otherwise.
bool use_wgmma(const Inputs& in) {
  if (env_choice("DEBERTA_FAST_CUDA_MMA", {"mma.sync", "wgmma"}) == 0) return false;
  if (in.elem == ElemType::kFloat32 || in.D != 64) return false;
  TORCH_CHECK(wgmma_kernels_loaded(in.q.get_device()), "DEBERTA_FAST_CUDA_MMA=wgmma needs the extension built "
              "for sm_90a (TORCH_CUDA_ARCH_LIST=9.0a) and an sm_90 GPU (H100, H200): the kernels running on ",
              in.q.device(), " have no wgmma");
  return true;
}

// Whether the kernels' band tiles read staged slabs (DEBERTA_FAST_CUDA_BAND=staged) for this call: slab rows start
// at 16-byte chunks of C2P / P2C rows (2S a multiple of a chunk) and span at most a tile's keys / queries (position
// rows that step by 0 or 1 per distance). Elsewhere the gathers. (The launchers also check the shared memory.)
bool staged_slabs(const SeqGeometry& geo, const Inputs& in) {
  const bool requested = staged_band();  // read first: a bad value is an error on every call
  return requested && geo.table.defined() && geo.unit_steps && in.two_s % (16 / in.q.element_size()) == 0;
}

void fill_common(AttnParams& p, const Inputs& in, int64_t b0, int64_t nb, double scale, double dropout_p,
                 bool masked_zero) {
  auto at_b = [&](const Tensor& t) { return static_cast<const char*>(t.data_ptr()) + b0 * t.stride(0) * t.element_size(); };
  p.q = at_b(in.q);
  p.k = at_b(in.k);
  p.v = at_b(in.v);
  p.q_stride_b = in.q.stride(0), p.q_stride_h = in.q.stride(1), p.q_stride_n = in.q.stride(2);
  p.k_stride_b = in.k.stride(0), p.k_stride_h = in.k.stride(1), p.k_stride_n = in.k.stride(2);
  p.v_stride_b = in.v.stride(0), p.v_stride_h = in.v.stride(1), p.v_stride_n = in.v.stride(2);
  p.two_s = static_cast<int>(in.two_s);
  if (in.mask.defined()) {
    p.mask = reinterpret_cast<const uint8_t*>(in.mask.data_ptr<bool>()) + b0 * in.mask.stride(0);
    p.mask_stride_b = in.mask.stride(0);
    p.mask_stride_n = in.mask.stride(1);
  }
  p.masked_zero = masked_zero;
  if (dropout_p > 0.0) {
    p.philox = in.philox.data_ptr<int64_t>();
    p.dropout_p = static_cast<float>(dropout_p);
  }
  p.B = static_cast<int>(nb);
  p.H = static_cast<int>(in.H);
  p.N = static_cast<int>(in.N);
  p.bh0 = static_cast<int>(b0 * in.H);
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
}

// x [nb, H, N, D] . pos [H, 2S, D]^T as [H, nb, N, 2S] (head-major): one GEMM per head over the nb * N rows,
// which for the model's [B, N, H, D] views are a strided view (no copy of x, nor of pos broadcast over the batch).
Tensor head_major_scores(const Tensor& x, const Tensor& pos) {
  const int64_t nb = x.size(0), H = x.size(1), N = x.size(2), D = x.size(3);
  const Tensor rows = x.transpose(0, 1).reshape({H, nb * N, D});
  return at::bmm(rows, pos.transpose(1, 2)).view({H, nb, N, pos.size(1)});
}

// C2P = q pos_key^T and P2C = k pos_query^T for one batch slice: contiguous [H, nb, N, 2S], input dtype.
std::pair<Tensor, Tensor> position_scores(const Inputs& in, int64_t b0, int64_t nb) {
  Tensor c2p, p2c;
  if (in.has_c2p) c2p = head_major_scores(in.q.narrow(0, b0, nb), in.pos_key);
  if (in.has_p2c) p2c = head_major_scores(in.k.narrow(0, b0, nb), in.pos_query);
  return {c2p, p2c};
}

// Sequences per slice: as few slices as the budget allows, as even as whole steps make them (8 sequences with
// room for 7 run as 4 + 4, not 7 + 1, whose one-sequence launches would leave most of the GPU idle).
int64_t slice_step(int64_t batch, int64_t bytes_per_sequence) {
  if (bytes_per_sequence <= 0 || batch <= 0) return std::max<int64_t>(batch, 1);
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>(batch, chunk_bytes() / bytes_per_sequence));
  const int64_t count = (batch + most - 1) / most;
  return (batch + count - 1) / count;
}

Tensor grad_like(const Inputs& in, at::ScalarType dtype) {  // [B, H, N, D] laid out as [B, N, H, D]
  return at::empty({in.B, in.N, in.H, in.D}, in.q.options().dtype(dtype)).transpose(1, 2);
}

// ------------------------------------------------------------------------------------------------------
// Forward.

std::tuple<Tensor, Tensor> attention_fwd(const Tensor& query, const Tensor& key, const Tensor& value,
                                         const std::optional<Tensor>& pos_key, const std::optional<Tensor>& pos_query,
                                         const std::optional<Tensor>& attention_mask,
                                         const std::optional<Tensor>& philox, int64_t position_buckets,
                                         int64_t max_relative_positions, double scale, double dropout_p,
                                         bool masked_zero) {
  const Inputs in = check_inputs(query, key, value, pos_key, pos_query, attention_mask, philox, position_buckets,
                                 max_relative_positions, dropout_p);
  const c10::cuda::CUDAGuard guard(query.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  Tensor out = grad_like(in, query.scalar_type());
  Tensor lse = at::empty({in.B, in.H, in.N}, query.options().dtype(at::kFloat));
  SeqGeometry geo;
  if (in.has_c2p || in.has_p2c) geo = seq_geometry(in.N, position_buckets, max_relative_positions, query.device());

  const bool staged = staged_slabs(geo, in);
  const FwdTiles tiles = fwd_tiles();
  const bool wgmma = use_wgmma(in);
  TORCH_CHECK(!wgmma || tiles == FwdTiles::k128x64, "DEBERTA_FAST_CUDA_MMA=wgmma runs the forward's 128x64 tiles "
              "only: unset DEBERTA_FAST_CUDA_FWD_TILES");
  const int64_t per_sequence = (in.has_c2p + in.has_p2c) * in.H * in.N * in.two_s * query.element_size();
  const int64_t step = slice_step(in.B, per_sequence);
  for (int64_t b0 = 0; b0 < in.B; b0 += step) {
    const int64_t nb = std::min(step, in.B - b0);
    auto [c2p, p2c] = position_scores(in, b0, nb);
    FwdParams p;
    fill_common(p, in, b0, nb, scale, dropout_p, masked_zero);
    fill_positions(p, geo, c2p, p2c);
    p.staged = staged;
    p.out = static_cast<char*>(out.data_ptr()) + b0 * out.stride(0) * out.element_size();
    p.o_stride_b = out.stride(0), p.o_stride_h = out.stride(1), p.o_stride_n = out.stride(2);
    p.lse = lse.data_ptr<float>() + b0 * in.H * in.N;
    DF_ELEM_SWITCH(in.elem, ELEM, [&] {
      DF_HEADDIM_SWITCH(in.D, HEAD_DIM, [&] {
        if constexpr (ELEM != ElemType::kFloat32) {
          if constexpr (HEAD_DIM == 64) {
            if (wgmma) return run_fwd_wgmma<ELEM, HEAD_DIM>(p, stream);
          }
          if (tiles == FwdTiles::k128x32) return run_fwd_128x32<ELEM, HEAD_DIM>(p, stream);
          if (tiles == FwdTiles::k64x64) return run_fwd_64x64<ELEM, HEAD_DIM>(p, stream);
        }
        run_fwd<ELEM, HEAD_DIM>(p, stream);
      });
    });
  }
  return {out, lse};
}

// ------------------------------------------------------------------------------------------------------
// Backward.

// a @ b batched with a float32 result: half-precision operands stay half (tensor cores, float32 accumulation
// and output).
Tensor matmul_f32(const Tensor& a, const Tensor& b) {
  if (a.scalar_type() == at::kFloat) return at::bmm(a, b.to(at::kFloat));
  return at::bmm(a, b.to(a.scalar_type()), at::kFloat);
}

// Row length of a band buffer: the band width rounded up to 8 elements (16-byte aligned half-precision rows,
// which cuBLAS needs for its fast kernels; an odd width such as DeBERTa-v3's 1017 made it fall back to
// align1 kernels in the Triton backend, which pads the same way).
int64_t band_stride(int64_t width) { return std::max<int64_t>(8, (width + 7) / 8 * 8); }

// Fold one position term's gradient into dx (float32 [nb, H, N, D] when band is given) and dpos (float32
// [H, 2S, D]): band [H, nb, N, >= W] (input dtype; row padding zero) holds dS by distance; sat [2, nb, H, N] (float32) dS summed
// over the pairs using row 0 / row 2S - 1 (the kernels already added their part of dx); x is the content
// side (q for c2p, k for p2c), pos its position table. Nothing here synchronizes with the host.
void position_grad(const Tensor& band, const Tensor& sat, const Tensor& x, const Tensor& pos, const SeqGeometry& geo,
                   double scale, const Tensor& dx, Tensor& dpos) {
  const int64_t H = pos.size(0), two_s = pos.size(1), D = pos.size(2);
  const int64_t nb = x.size(0), N = x.size(2);
  const Tensor x32 = x.to(at::kFloat);
  dpos.select(1, 0).add_(at::einsum("bhn,bhnd->hd", {sat[0], x32}), scale);
  dpos.select(1, two_s - 1).add_(at::einsum("bhn,bhnd->hd", {sat[1], x32}), scale);
  if (!band.defined()) return;
  const Tensor index = geo.band_index(N);
  const int64_t width = index.numel();
  const int64_t padded = band.size(-1);
  const Tensor rows = band.view({H, nb * N, padded});
  // The position row of each distance, zero rows for the padding.
  const Tensor table = at::constant_pad_nd(pos.index_select(1, index), {0, 0, 0, padded - width});
  const Tensor extra = matmul_f32(rows, table);  // [H, nb * N, D]
  dx.add_(extra.view({H, nb, N, D}).transpose(0, 1), scale);
  const Tensor per_distance = matmul_f32(rows.transpose(1, 2), x.transpose(0, 1).reshape({H, nb * N, D}));  // [H, padded, D]
  // [2S, W] one-hot of the band's rows, by a comparison (an indexed assignment would synchronize).
  const Tensor onehot = at::arange(two_s, index.options()).unsqueeze(1).eq(index.unsqueeze(0)).to(at::kFloat);
  dpos.add_(at::matmul(onehot, per_distance.narrow(1, 0, width)), scale);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> attention_bwd(
    const Tensor& grad_out, const Tensor& query, const Tensor& key, const Tensor& value,
    const std::optional<Tensor>& pos_key, const std::optional<Tensor>& pos_query,
    const std::optional<Tensor>& attention_mask, const std::optional<Tensor>& philox, const Tensor& out,
    const Tensor& lse, int64_t position_buckets, int64_t max_relative_positions, double scale, double dropout_p,
    bool masked_zero) {
  const Inputs in = check_inputs(query, key, value, pos_key, pos_query, attention_mask, philox, position_buckets,
                                 max_relative_positions, dropout_p);
  check_operand("grad_out", grad_out, query);
  check_operand("out", out, query);
  CHECK_SHAPE(grad_out, in.B, in.H, in.N, in.D);
  CHECK_SHAPE(out, in.B, in.H, in.N, in.D);
  TORCH_CHECK(lse.is_cuda() && lse.scalar_type() == at::kFloat, "deberta_fast cuda backend: lse must be float32 on CUDA");
  CHECK_SHAPE(lse, in.B, in.H, in.N);
  const c10::cuda::CUDAGuard guard(query.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const Tensor dout = kernel_operand(grad_out);
  const Tensor o = kernel_operand(out);
  const Tensor lse_c = lse.contiguous();
  const auto f32 = query.options().dtype(at::kFloat);

  Tensor delta = at::empty({in.B, in.H, in.N}, f32);
  {
    DeltaParams dp;
    dp.out = o.data_ptr();
    dp.o_stride_b = o.stride(0), dp.o_stride_h = o.stride(1), dp.o_stride_n = o.stride(2);
    dp.dout = dout.data_ptr();
    dp.do_stride_b = dout.stride(0), dp.do_stride_h = dout.stride(1), dp.do_stride_n = dout.stride(2);
    dp.delta = delta.data_ptr<float>();
    dp.B = static_cast<int>(in.B), dp.H = static_cast<int>(in.H), dp.N = static_cast<int>(in.N);
    dp.D = static_cast<int>(in.D);
    run_delta(in.elem, dp, stream);
  }

  SeqGeometry geo;
  if (in.has_c2p || in.has_p2c) geo = seq_geometry(in.N, position_buckets, max_relative_positions, query.device());
  const bool wgmma = use_wgmma(in);
  const int64_t width = geo.table.defined() ? geo.width() : 0;
  const bool staged = staged_slabs(geo, in);
  const bool band_c2p = in.has_c2p && width > 0;
  const bool band_p2c = in.has_p2c && width > 0;
  Tensor dq = grad_like(in, band_c2p ? at::kFloat : query.scalar_type());
  Tensor dk = grad_like(in, band_p2c ? at::kFloat : query.scalar_type());
  Tensor dv = grad_like(in, query.scalar_type());
  Tensor dpos_key = in.has_c2p ? at::zeros(in.pos_key.sizes(), f32) : Tensor();
  Tensor dpos_query = in.has_p2c ? at::zeros(in.pos_query.sizes(), f32) : Tensor();

  const int64_t stride = band_stride(width);
  const int64_t per_sequence =
      (in.has_c2p + in.has_p2c) * in.H * in.N * (in.two_s + stride) * query.element_size();
  const int64_t step = slice_step(in.B, per_sequence);
  for (int64_t b0 = 0; b0 < in.B; b0 += step) {
    const int64_t nb = std::min(step, in.B - b0);
    auto [c2p, p2c] = position_scores(in, b0, nb);
    // Uninitialized; the slots no pair writes are zeroed here, every other slot is written by the kernels.
    Tensor band_q = band_c2p ? at::empty({in.H, nb, in.N, stride}, query.options()) : Tensor();
    Tensor band_k = band_p2c ? at::empty({in.H, nb, in.N, stride}, query.options()) : Tensor();
    for (const auto& [band, rows_are_queries] : {std::pair<Tensor, bool>{band_q, true}, {band_k, false}}) {
      if (band.defined()) {
        run_band_edges(band.data_ptr(), static_cast<int>(band.element_size()), in.H * nb, static_cast<int>(in.N),
                       static_cast<int>(width), static_cast<int>(stride), static_cast<int>(geo.r_lo),
                       rows_are_queries, stream);
      }
    }
    Tensor sat_q = in.has_c2p ? at::empty({2, nb, in.H, in.N}, f32) : Tensor();
    Tensor sat_k = in.has_p2c ? at::empty({2, nb, in.H, in.N}, f32) : Tensor();
    Tensor dq_s = dq.narrow(0, b0, nb), dk_s = dk.narrow(0, b0, nb), dv_s = dv.narrow(0, b0, nb);

    BwdParams p;
    fill_common(p, in, b0, nb, scale, dropout_p, masked_zero);
    fill_positions(p, geo, c2p, p2c);
    p.staged = staged;
    p.dout = static_cast<const char*>(dout.data_ptr()) + b0 * dout.stride(0) * dout.element_size();
    p.do_stride_b = dout.stride(0), p.do_stride_h = dout.stride(1), p.do_stride_n = dout.stride(2);
    p.lse = lse_c.data_ptr<float>() + b0 * in.H * in.N;
    p.delta = delta.data_ptr<float>() + b0 * in.H * in.N;
    p.dq = dq_s.data_ptr(), p.dq_f32 = band_c2p;
    p.dq_stride_b = dq.stride(0), p.dq_stride_h = dq.stride(1), p.dq_stride_n = dq.stride(2);
    p.dk = dk_s.data_ptr(), p.dk_f32 = band_p2c;
    p.dk_stride_b = dk.stride(0), p.dk_stride_h = dk.stride(1), p.dk_stride_n = dk.stride(2);
    p.dv = dv_s.data_ptr();
    p.dv_stride_b = dv.stride(0), p.dv_stride_h = dv.stride(1), p.dv_stride_n = dv.stride(2);
    if (in.has_c2p) {
      p.pos_key = in.pos_key.data_ptr();
      p.pk_stride_h = in.pos_key.stride(0), p.pk_stride_n = in.pos_key.stride(1);
      p.sat_q = sat_q.data_ptr<float>();
    }
    if (in.has_p2c) {
      p.pos_query = in.pos_query.data_ptr();
      p.pq_stride_h = in.pos_query.stride(0), p.pq_stride_n = in.pos_query.stride(1);
      p.sat_k = sat_k.data_ptr<float>();
    }
    if (band_q.defined()) p.band_q = band_q.data_ptr();
    if (band_k.defined()) p.band_k = band_k.data_ptr();
    p.band_w = static_cast<int>(stride);  // row stride of the band buffers
    DF_ELEM_SWITCH(in.elem, ELEM, [&] {
      DF_HEADDIM_SWITCH(in.D, HEAD_DIM, [&] {
        if constexpr (ELEM != ElemType::kFloat32 && HEAD_DIM == 64) {
          if (wgmma) {
            run_dkdv_wgmma<ELEM, HEAD_DIM>(p, stream);
            run_dq_wgmma<ELEM, HEAD_DIM>(p, stream);
            return;
          }
        }
        run_dkdv<ELEM, HEAD_DIM>(p, stream);
        run_dq<ELEM, HEAD_DIM>(p, stream);
      });
    });
    if (in.has_c2p) position_grad(band_q, sat_q, in.q.narrow(0, b0, nb), in.pos_key, geo, scale, dq_s, dpos_key);
    if (in.has_p2c) position_grad(band_k, sat_k, in.k.narrow(0, b0, nb), in.pos_query, geo, scale, dk_s, dpos_query);
  }

  const auto dtype = query.scalar_type();
  return {dq.to(dtype), dk.to(dtype), dv,
          in.has_c2p ? dpos_key.to(dtype) : at::empty({0}, query.options()),
          in.has_p2c ? dpos_query.to(dtype) : at::empty({0}, query.options())};
}

// ------------------------------------------------------------------------------------------------------
// Test hooks.

void check_mask_args(const Tensor& philox, int64_t batch, int64_t heads, int64_t seq_len, double p) {
  TORCH_CHECK(philox.scalar_type() == at::kLong && philox.numel() == 2,
              "cuda_dropout_mask: philox must be an int64 tensor [seed, offset]");
  TORCH_CHECK(batch >= 1 && heads >= 1 && seq_len >= 1 && batch * heads <= 65535 && seq_len <= 65535,
              "cuda_dropout_mask: bad sizes");
  TORCH_CHECK(p >= 0.0 && p < 1.0, "cuda_dropout_mask: dropout_p must be in [0, 1)");
}

Tensor dropout_mask_cuda(const Tensor& philox, int64_t batch, int64_t heads, int64_t seq_len, double dropout_p) {
  check_mask_args(philox, batch, heads, seq_len, dropout_p);
  const c10::cuda::CUDAGuard guard(philox.device());
  const Tensor ph = philox.contiguous();
  Tensor keep = at::empty({batch, heads, seq_len, seq_len}, philox.options().dtype(at::kByte));
  run_dropout_mask(ph.data_ptr<int64_t>(), static_cast<float>(dropout_p), static_cast<int>(batch * heads),
                   static_cast<int>(seq_len), keep.data_ptr<uint8_t>(), c10::cuda::getCurrentCUDAStream().stream());
  return keep.view(at::kBool);
}

Tensor wgmma_probe(const Tensor& a, const Tensor& b, bool rn) {
  check_operand("b", b, a);
  TORCH_CHECK(a.is_cuda() && (a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16),
              "cuda_wgmma_probe: a must be a float16 / bfloat16 CUDA tensor");
  CHECK_SHAPE(a, 64, 64);
  CHECK_SHAPE(b, 64, 64);
  const c10::cuda::CUDAGuard guard(a.device());
  TORCH_CHECK(wgmma_kernels_loaded(a.get_device()), "cuda_wgmma_probe: the kernels running on ", a.device(),
              " have no wgmma (an sm_90a build on an sm_90 GPU)");
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  Tensor out = at::empty({64, 64}, a.options().dtype(at::kFloat));
  run_wgmma_probe(elem_type(a), ac.data_ptr(), bc.data_ptr(), out.data_ptr<float>(), rn,
                  c10::cuda::getCurrentCUDAStream().stream());
  return out;
}

Tensor dropout_mask_cpu(const Tensor& philox, int64_t batch, int64_t heads, int64_t seq_len, double dropout_p) {
  check_mask_args(philox, batch, heads, seq_len, dropout_p);
  const Tensor ph = philox.contiguous();
  const DropoutKey key = make_dropout_key(ph.data_ptr<int64_t>()[0], ph.data_ptr<int64_t>()[1], static_cast<float>(dropout_p));
  Tensor keep = at::empty({batch, heads, seq_len, seq_len}, philox.options().dtype(at::kBool));
  bool* data = keep.data_ptr<bool>();
  const int64_t n = seq_len;
  at::parallel_for(0, batch * heads * n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const uint32_t bh = static_cast<uint32_t>(row / n), i = static_cast<uint32_t>(row % n);
      for (int64_t j = 0; j < n; ++j) data[row * n + j] = dropout_keep(key, bh, i, static_cast<uint32_t>(j));
    }
  });
  return keep;
}

// The kernels' score code (score_terms.h) run on the CPU, lane by lane, on one warp's tile of kHookMF x kHookNF
// accumulator fragments ([32, 64] floats): what the kernels compute, checked by the tests against
// an independent reference.
constexpr int kHookMF = 2, kHookNF = 8, kHookRows = 16 * kHookMF, kHookCols = 8 * kHookNF;

template <typename F>
void for_each_fragment(int lane, F&& f) {  // f(mf, nf, e, row, col): element e of acc[mf][nf] and its tile place
  for_each_element<kHookMF, kHookNF>([&](int mf, int nf, int e) {
    const TilePlace at = tile_place(lane, mf, nf, e);
    f(mf, nf, e, at.row, at.col);
  });
}

void check_hook_tensor(const Tensor& t, const char* name, at::ScalarType dtype, std::vector<int64_t> shape) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.sizes() == at::IntArrayRef(shape), name,
              " must be a CPU ", dtype, " tensor of shape ", at::IntArrayRef(shape), ", got ", t.scalar_type(), " ",
              t.sizes(), " on ", t.device());
}

// The hooks' table: every row of it a position row in [0, 2S).
bool table_rows_within(const Tensor& table, int64_t two_s) {
  return table.min().item<int>() >= 0 && table.max().item<int>() < two_s;
}

AttnParams hook_params(int64_t seq_len, int64_t r_hi, int64_t r_lo, int64_t row0, int64_t col0, int64_t mode) {
  TORCH_CHECK(mode >= kPlain && mode <= kSatLo, "score hooks: mode must be 0 (plain), 1 (band), 2 (sat hi) or 3 (sat lo)");
  TORCH_CHECK(seq_len >= 1 && r_hi >= 1 && r_lo >= 1, "score hooks: seq_len, r_hi and r_lo must be >= 1");
  TORCH_CHECK(row0 >= 0 && col0 >= 0 && row0 + kHookRows < (1 << 30) && col0 + kHookCols < (1 << 30),
              "score hooks: row0 and col0 must be tile origins >= 0, got ", row0, ", ", col0);
  AttnParams p;
  p.N = static_cast<int>(seq_len);
  p.r_hi = static_cast<int>(r_hi);
  p.r_lo = static_cast<int>(r_lo);
  return p;
}

Tensor score_terms_cpu(const Tensor& scores, const std::optional<Tensor>& c2p, const std::optional<Tensor>& p2c,
                       const Tensor& table, const Tensor& col_term, const Tensor& row_hi, const Tensor& row_lo,
                       int64_t r_hi, int64_t r_lo, int64_t row0, int64_t col0, bool trans, int64_t mode) {
  const int64_t n = (table.numel() + 1) / 2;
  check_hook_tensor(table, "table", at::kInt, {2 * n - 1});
  check_hook_tensor(scores, "scores", at::kFloat, {kHookRows, kHookCols});
  check_hook_tensor(col_term, "col_term", at::kFloat, {kHookCols});
  check_hook_tensor(row_hi, "row_hi", at::kFloat, {kHookRows});
  check_hook_tensor(row_lo, "row_lo", at::kFloat, {kHookRows});
  AttnParams p = hook_params(n, r_hi, r_lo, row0, col0, mode);
  const Tensor pos = c2p.has_value() ? *c2p : (p2c.has_value() ? *p2c : Tensor());
  p.two_s = pos.defined() ? static_cast<int>(pos.size(1)) : 1;
  for (const auto* term : {&c2p, &p2c}) {
    if (term->has_value()) check_hook_tensor(**term, "c2p / p2c", at::kFloat, {n, p.two_s});
  }
  TORCH_CHECK(!pos.defined() || table_rows_within(table, p.two_s),
              "score hooks: the table's rows must lie in [0, 2S)");
  const Tensor tab = table.contiguous();
  p.table = tab.data_ptr<int32_t>();
  const Tensor c2p_c = c2p.has_value() ? c2p->contiguous() : Tensor(), p2c_c = p2c.has_value() ? p2c->contiguous() : Tensor();
  const float* c2p_data = c2p_c.defined() ? c2p_c.data_ptr<float>() : nullptr;
  const float* p2c_data = p2c_c.defined() ? p2c_c.data_ptr<float>() : nullptr;
  const Tensor in = scores.contiguous(), cols = col_term.contiguous(), hi = row_hi.contiguous(), lo = row_lo.contiguous();
  Tensor out = at::empty_like(in);
  auto s_in = in.accessor<float, 2>();
  auto s_out = out.accessor<float, 2>();
  for (int lane = 0; lane < 32; ++lane) {
    float s[kHookMF][kHookNF][4], rh[kHookMF][2], rl[kHookMF][2];
    for_each_fragment(lane, [&](int mf, int nf, int e, int r, int c) {
      s[mf][nf][e] = s_in[r][c];
      rh[mf][e >> 1] = hi.data_ptr<float>()[r];
      rl[mf][e >> 1] = lo.data_ptr<float>()[r];
    });
    const int r0 = static_cast<int>(row0), c0 = static_cast<int>(col0), m = static_cast<int>(mode);
    if (trans) {
      add_position_terms_any<true>(m, s, p, c2p_data, p2c_data, r0, c0, lane, cols.data_ptr<float>(), rh, rl);
    } else {
      add_position_terms_any<false>(m, s, p, c2p_data, p2c_data, r0, c0, lane, cols.data_ptr<float>(), rh, rl);
    }
    for_each_fragment(lane, [&](int mf, int nf, int e, int r, int c) { s_out[r][c] = s[mf][nf][e]; });
  }
  return out;
}

// The kernels' staged band terms (score_terms.h: staged_window_row, staged_chunk, add_staged_band_terms) on the
// CPU: one CTA tile of 64 queries from q0 and 64 keys from k0 is staged as the kernels stage it (chunks of ``chunk``
// elements; slab slots no chunk fills hold NaN), then the warp whose rows start at warp_row0 (0 or kHookRows) of it
// adds its terms, lane by lane: rows are queries, or keys with ``trans`` (the dK/dV kernel).
Tensor staged_terms_cpu(const Tensor& scores, const std::optional<Tensor>& c2p, const std::optional<Tensor>& p2c,
                        const Tensor& table, const Tensor& col_term, int64_t q0, int64_t k0, int64_t warp_row0,
                        int64_t chunk, bool trans) {
  constexpr int qc = 2 * kHookRows, kc = kHookCols;
  static_assert(qc == kc, "the CTA tile is square: two warps of rows either way round");
  const int64_t n = (table.numel() + 1) / 2;
  check_hook_tensor(table, "table", at::kInt, {2 * n - 1});
  check_hook_tensor(scores, "scores", at::kFloat, {kHookRows, kHookCols});
  check_hook_tensor(col_term, "col_term", at::kFloat, {kHookCols});
  TORCH_CHECK(c2p.has_value() || p2c.has_value(), "cuda_staged_terms: c2p or p2c is needed");
  const int64_t two_s = (c2p.has_value() ? *c2p : *p2c).size(1);
  for (const auto* term : {&c2p, &p2c}) {
    if (term->has_value()) check_hook_tensor(**term, "c2p / p2c", at::kFloat, {n, two_s});
  }
  TORCH_CHECK((chunk == 4 || chunk == 8) && two_s % chunk == 0,
              "cuda_staged_terms: chunk must be 4 or 8 and divide 2S");
  TORCH_CHECK(warp_row0 == 0 || warp_row0 == kHookRows, "cuda_staged_terms: warp_row0 must be 0 or ", kHookRows);
  const Tensor steps = n > 1 ? table.slice(0, 1) - table.slice(0, 0, -1) : at::zeros({1}, table.options());
  TORCH_CHECK(table_rows_within(table, two_s) && steps.min().item<int>() >= 0 && steps.max().item<int>() <= 1,
              "cuda_staged_terms: the table's rows must lie in [0, 2S) and step by 0 or 1 (what the slabs rely on)");
  TORCH_CHECK(q0 >= 0 && k0 >= 0 && q0 < (1 << 30) && k0 < (1 << 30), "cuda_staged_terms: q0 and k0 must be >= 0");
  AttnParams p;
  p.N = static_cast<int>(n);
  p.two_s = static_cast<int>(two_s);
  const Tensor tab = table.contiguous();
  p.table = tab.data_ptr<int32_t>();
  const int ch = static_cast<int>(chunk), tq0 = static_cast<int>(q0), tk0 = static_cast<int>(k0);
  std::vector<int> win(qc + kc);
  for (int w = 0; w < qc + kc - 1; ++w) win[w] = staged_window_row(p, tq0, tk0, kc, w);
  const Tensor c2p_c = c2p.has_value() ? c2p->contiguous() : Tensor();
  const Tensor p2c_c = p2c.has_value() ? p2c->contiguous() : Tensor();
  std::vector<float> slab_c2p(qc * (kc + ch), NAN), slab_p2c(kc * (qc + ch), NAN);
  const int total = staged_c2p_chunks(qc, kc, ch) + staged_p2c_chunks(qc, kc, ch);
  for (int idx = 0; idx < total; ++idx) {
    StagedChunk c;
    if (!staged_chunk(p, win.data(), tq0, tk0, qc, kc, ch, c2p.has_value(), p2c.has_value(), idx, c)) continue;
    const float* src = (c.p2c ? p2c_c : c2p_c).data_ptr<float>() + c.src;
    float* dst = (c.p2c ? slab_p2c : slab_c2p).data() + c.dst;
    for (int e = 0; e < ch; ++e) dst[e] = c.valid ? src[e] : 0.f;
  }
  const Tensor in = scores.contiguous(), cols = col_term.contiguous();
  Tensor out = at::empty_like(in);
  auto s_in = in.accessor<float, 2>();
  auto s_out = out.accessor<float, 2>();
  for (int lane = 0; lane < 32; ++lane) {
    float s[kHookMF][kHookNF][4];
    for_each_fragment(lane, [&](int mf, int nf, int e, int r, int c) { s[mf][nf][e] = s_in[r][c]; });
    const int wr0 = static_cast<int>(warp_row0);
    if (trans) {
      add_staged_band_terms<true, kHookMF, kHookNF>(s, p, tq0, tk0, qc, kc, ch, wr0, lane, cols.data_ptr<float>(),
                                                    win.data(), slab_c2p.data(), slab_p2c.data(), c2p.has_value(),
                                                    p2c.has_value());
    } else {
      add_staged_band_terms<false, kHookMF, kHookNF>(s, p, tq0, tk0, qc, kc, ch, wr0, lane, cols.data_ptr<float>(),
                                                     win.data(), slab_c2p.data(), slab_p2c.data(), c2p.has_value(),
                                                     p2c.has_value());
    }
    for_each_fragment(lane, [&](int mf, int nf, int e, int r, int c) { s_out[r][c] = s[mf][nf][e]; });
  }
  return out;
}

std::tuple<Tensor, Tensor, Tensor> slot_sums_cpu(const Tensor& ds, int64_t seq_len, int64_t r_hi, int64_t r_lo,
                                                 int64_t band_w, int64_t row0, int64_t col0, bool trans,
                                                 int64_t mode) {
  check_hook_tensor(ds, "ds", at::kFloat, {kHookRows, kHookCols});
  TORCH_CHECK(band_w >= r_hi + r_lo - 1, "score hooks: band_w must hold the band's r_hi + r_lo - 1 distances");
  const AttnParams p = hook_params(seq_len, r_hi, r_lo, row0, col0, mode);
  const Tensor in = ds.contiguous();
  auto d_in = in.accessor<float, 2>();
  // The band rows of the whole sequence, NaN where nothing is stored; hi / lo per tile row, summed over the quad
  // (lanes 4 g .. 4 g + 3 hold a row between them) in the kernels' quad_sum order.
  Tensor band = at::full({seq_len, band_w}, NAN, in.options());
  Tensor hi = at::zeros({kHookRows}, in.options()), lo = at::zeros({kHookRows}, in.options());
  float lane_hi[32][kHookMF][2], lane_lo[32][kHookMF][2];
  for (int lane = 0; lane < 32; ++lane) {
    float d[kHookMF][kHookNF][4];
    for_each_fragment(lane, [&](int mf, int nf, int e, int r, int c) { d[mf][nf][e] = d_in[r][c]; });
    for (int mf = 0; mf < kHookMF; ++mf) lane_hi[lane][mf][0] = lane_hi[lane][mf][1] = lane_lo[lane][mf][0] = lane_lo[lane][mf][1] = 0.f;
    const int r0 = static_cast<int>(row0), c0 = static_cast<int>(col0), m = static_cast<int>(mode);
    float* b = band.data_ptr<float>();
    if (trans) {
      add_slot_sums_any<true>(m, lane_hi[lane], lane_lo[lane], p, d, r0, c0, lane, b, static_cast<int>(band_w));
    } else {
      add_slot_sums_any<false>(m, lane_hi[lane], lane_lo[lane], p, d, r0, c0, lane, b, static_cast<int>(band_w));
    }
  }
  for (int g = 0; g < 8; ++g) {
    for (int mf = 0; mf < kHookMF; ++mf) {
      for (int hh = 0; hh < 2; ++hh) {
        const int r = mf * 16 + g + 8 * hh;
        auto quad = [&](float (&v)[32][kHookMF][2]) {
          const int l = 4 * g;
          return (v[l][mf][hh] + v[l + 1][mf][hh]) + (v[l + 2][mf][hh] + v[l + 3][mf][hh]);
        };
        hi.data_ptr<float>()[r] = quad(lane_hi);
        lo.data_ptr<float>()[r] = quad(lane_lo);
      }
    }
  }
  return {hi, lo, band};
}

std::tuple<Tensor, int64_t, int64_t, bool> position_geometry(const Tensor& like, int64_t seq_len, int64_t buckets,
                                                             int64_t max_rel) {
  TORCH_CHECK(seq_len >= 1, "cuda_position_geometry: seq_len must be >= 1");
  TORCH_CHECK(max_rel >= 1 && buckets != 1, "cuda_position_geometry: invalid position settings");
  const SeqGeometry geo = seq_geometry(seq_len, buckets, max_rel, like.device());
  return {geo.table.clone(), geo.r_hi, geo.r_lo, geo.unit_steps};
}

}  // namespace
}  // namespace deberta_fast

TORCH_LIBRARY_FRAGMENT(deberta_fast, m) {
  m.set_python_module("deberta_fast.backends.cuda_backend");
  m.def(
      "cuda_attention_fwd(Tensor query, Tensor key, Tensor value, Tensor? pos_key, Tensor? pos_query, "
      "Tensor? attention_mask, Tensor? philox, int position_buckets, int max_relative_positions, float scale, "
      "float dropout_p, bool masked_zero) -> (Tensor, Tensor)");
  m.def(
      "cuda_attention_bwd(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor? pos_key, "
      "Tensor? pos_query, Tensor? attention_mask, Tensor? philox, Tensor out, Tensor lse, int position_buckets, "
      "int max_relative_positions, float scale, float dropout_p, bool masked_zero) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("cuda_dropout_mask(Tensor philox, int batch, int heads, int seq_len, float dropout_p) -> Tensor");
  m.def("cuda_wgmma_probe(Tensor a, Tensor b, bool rn) -> Tensor");
  m.def("cuda_score_terms(Tensor scores, Tensor? c2p, Tensor? p2c, Tensor table, Tensor col_term, Tensor row_hi, "
        "Tensor row_lo, int r_hi, int r_lo, int row0, int col0, bool trans, int mode) -> Tensor");
  m.def("cuda_staged_terms(Tensor scores, Tensor? c2p, Tensor? p2c, Tensor table, Tensor col_term, int q0, int k0, "
        "int warp_row0, int chunk, bool trans) -> Tensor");
  m.def("cuda_slot_sums(Tensor ds, int seq_len, int r_hi, int r_lo, int band_w, int row0, int col0, bool trans, "
        "int mode) -> (Tensor, Tensor, Tensor)");
  m.def("cuda_position_geometry(Tensor like, int seq_len, int position_buckets, int max_relative_positions) "
        "-> (Tensor, int, int, bool)");
}

TORCH_LIBRARY_IMPL(deberta_fast, CUDA, m) {
  m.impl("cuda_attention_fwd", &deberta_fast::attention_fwd);
  m.impl("cuda_attention_bwd", &deberta_fast::attention_bwd);
  m.impl("cuda_dropout_mask", &deberta_fast::dropout_mask_cuda);
  m.impl("cuda_wgmma_probe", &deberta_fast::wgmma_probe);
}

TORCH_LIBRARY_IMPL(deberta_fast, CPU, m) {
  m.impl("cuda_dropout_mask", &deberta_fast::dropout_mask_cpu);
  m.impl("cuda_score_terms", &deberta_fast::score_terms_cpu);
  m.impl("cuda_slot_sums", &deberta_fast::slot_sums_cpu);
  m.impl("cuda_staged_terms", &deberta_fast::staged_terms_cpu);
}

TORCH_LIBRARY_IMPL(deberta_fast, CompositeExplicitAutograd, m) {
  m.impl("cuda_position_geometry", &deberta_fast::position_geometry);
}

// A minimal Python module (no pybind11): importing it registers the ops above. TORCH_EXTENSION_NAME is _C for
// setup.py builds and the cache name for just-in-time builds; DEBERTA_FAST_CUDA_ARCHS lists the targets.
#ifndef DEBERTA_FAST_CUDA_ARCHS
#define DEBERTA_FAST_CUDA_ARCHS unknown
#endif
#define DF_STR_(x) #x
#define DF_STR(x) DF_STR_(x)
#define DF_CONCAT_(a, b) a##b
#define DF_CONCAT(a, b) DF_CONCAT_(a, b)

extern "C" PyMODINIT_FUNC DF_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, DF_STR(TORCH_EXTENSION_NAME),
                                   "deberta_fast CUDA kernels: registers the deberta_fast::cuda_* torch ops.", -1,
                                   nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  if (PyModule_AddStringConstant(module, "cuda_archs", DF_STR(DEBERTA_FAST_CUDA_ARCHS)) < 0 ||
      PyModule_AddIntConstant(module, "cuda_version", CUDART_VERSION) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
