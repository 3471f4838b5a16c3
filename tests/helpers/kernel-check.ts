// The addon's logprob-kernel check (addon/kernels.cc kernelCheckLogprobRows), typed once for the CPU
// and the CUDA kernel tests: random logits of `rows` × `vocab` at temperature `t`, the kernel
// against its ATen reference (max differences) and both against fp64 values.
import { addon } from "../../src/native/binding.js";

export interface LogprobRowsCheck {
  logprob: number;
  entropy: number;
  lse: number;
  gradLogits: number;
  gradLogitsNoEntropy: number;
  gradScale: number;
  exact: Record<"kernel" | "reference", { logprob: number; entropy: number; gradLogits: number }>;
}

export const checkLogprobRows = (
  addon() as unknown as {
    kernelCheckLogprobRows(
      device: string,
      dtype: string,
      rows: number,
      vocab: number,
      t: number,
      seed: number,
    ): LogprobRowsCheck;
  }
).kernelCheckLogprobRows;

export interface FusedPartCheck {
  /** Elements whose bits differ between the fused forward and the ATen expression. */
  mismatches: number;
  elements: number;
  /** max |fused input gradient - autograd's through the ATen expression| */
  gradDiff: number;
  gradScale: number;
}

/** addon/kernels.cc kernelCheckFused: the fused rope and SwiGLU kernels against ATen, `tokens` rows. */
export const checkFused = (
  addon() as unknown as {
    kernelCheckFused(
      device: string,
      dtype: string,
      tokens: number,
      seed: number,
    ): { available: boolean; rope: FusedPartCheck; siluMul: FusedPartCheck; siluMulHalves: FusedPartCheck };
  }
).kernelCheckFused;

/** addon/kernels.cc kernelCheckDecode: the decode-attention kernel and flash against fp64, and the KV write. */
export const checkDecode = (
  addon() as unknown as {
    kernelCheckDecode(
      device: string,
      dtype: string,
      rows: number,
      heads: number,
      kvHeads: number,
      headDim: number,
      maxLen: number,
      window: number,
      seed: number,
    ): {
      available: boolean;
      kernel: number;
      flash: number;
      scale: number;
      kvWritten: boolean;
      kvWriteMismatches: number;
    };
  }
).kernelCheckDecode;

/** addon/kernels.cc kernelCheckSample: the sampling kernel's tokens against the fp64 inverse CDF. */
export const checkSample = (
  addon() as unknown as {
    kernelCheckSample(
      device: string,
      rows: number,
      vocab: number,
      temperature: number,
      seed: number,
    ): { available: boolean; mismatches: number; zeroMassPicks: number; lastPicks: number };
  }
).kernelCheckSample;

export interface MoeCombineCheck {
  available: boolean;
  /** max |engine - fp64| of the combined output, d x and d weights */
  out: number;
  gradX: number;
  gradWeights: number;
  outScale: number;
  gradXScale: number;
  gradWeightsScale: number;
  /** elements of output and gradients that differ between two identical runs */
  repeatMismatches: number;
}

/** addon/kernels.cc kernelCheckMoeCombine: the MoE dispatch/combine (gather kernels on CUDA) against fp64. */
export const checkMoeCombine = (
  addon() as unknown as {
    kernelCheckMoeCombine(
      device: string,
      dtype: string,
      tokens: number,
      hidden: number,
      experts: number,
      topK: number,
      seed: number,
    ): MoeCombineCheck;
  }
).kernelCheckMoeCombine;

export interface FusedLinearPart {
  outDiff: number;
  outScale: number;
  gradDiff: number;
  gradScale: number;
}

/** addon/kernels.cc kernelCheckFusedLinear: q/k/v and gate/up packed in one storage (one GEMM) against separate tensors. */
export const checkFusedLinear = (
  addon() as unknown as {
    kernelCheckFusedLinear(
      device: string,
      dtype: string,
      tokens: number,
      seed: number,
    ): { adjacent: boolean; clonesAdjacent: boolean; qkv: FusedLinearPart; swiglu: FusedLinearPart };
  }
).kernelCheckFusedLinear;

export interface DiffScale {
  diff: number;
  scale: number;
}

/** addon/kernels.cc kernelCheckDecodeNorm: the decode step's norm/rope kernels and the strided KV write against ATen. */
export const checkDecodeNorm = (
  addon() as unknown as {
    kernelCheckDecodeNorm(
      device: string,
      dtype: string,
      rows: number,
      seed: number,
    ): {
      available: boolean;
      addSum: number;
      norm: DiffScale;
      qkNormRope: DiffScale;
      rope: DiffScale;
      stridedKvWriteMismatches: number;
    };
  }
).kernelCheckDecodeNorm;
