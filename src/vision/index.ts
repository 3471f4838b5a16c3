// Images for vision-language models: decoding, Pillow-exact resampling, the Qwen2-VL processor.
export { decodeImage, encodePng, imageFormat, type RgbImage } from "./image.js";
export {
  countImagePlaceholders,
  expandImagePads,
  imageDataUrl,
  imagePromptParts,
  imageSize,
  imageTokenCounts,
} from "./prompt.js";
export {
  type ImageProcessorConfig,
  imageProcessorConfig,
  type ProcessedImages,
  preprocessImages,
  qwen2VlDefaults,
  readImageProcessorConfig,
  smartResize,
} from "./qwen2-vl.js";
export { type ResampleFilter, resizeRgb } from "./resize.js";
