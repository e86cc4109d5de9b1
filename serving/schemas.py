"""Request and response models of the detection service (pydantic; they drive the OpenAPI docs)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DetectOptions", "DetectJSON", "Detection", "RegionOut", "CostOut", "TimingOut", "ImageOut", "DetectResponse",
           "Problem", "ServiceConfig", "DetectorConfig"]


class DetectOptions(BaseModel):
    """Per-request options (form fields with a multipart upload, keys of the JSON body otherwise)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    policy: Optional[str] = Field(None, description="agent (trained agent), greedy, fine, coarse, sahi, random, "
                                                    "greedy-entropy; default: the service's default_policy")
    max_pixels_ratio: Optional[float] = Field(None, gt=0, le=4, description="pixel budget, coarse pass included")
    max_steps: Optional[int] = Field(None, ge=0, le=64, description="most zoom windows")
    lam: Optional[float] = Field(None, alias="lambda", ge=0,
                                 description="λ: reported with the trace (the agent's own λ is fixed at training)")
    score_threshold: Optional[float] = Field(None, ge=0, le=1, description="drop returned detections below this score")
    max_latency_ms: Optional[float] = Field(None, gt=0, le=600_000, description="answer within about this many ms "
                                            "of the request's arrival: the coarse pass always runs, then the zoom "
                                            "windows that would end past it are left out (regions_dropped), most "
                                            "wanted first kept; default: the service's max_latency_ms. Plan "
                                            "policies (fine, sahi) ignore it")
    return_trace: bool = Field(False, description="include the per-step episode (zoomdet.episode/1)")


class DetectJSON(DetectOptions):
    """JSON body: the image base64-encoded plus the options."""

    image_base64: str = Field(..., description="the image file's bytes (JPEG, PNG, ...) in base64: plain, "
                              "wrapped in lines, or a data:<type>;base64, URI")


class Detection(BaseModel):
    box_xyxy: list[float] = Field(..., description="[x0, y0, x1, y1], full-resolution image pixels")
    score: float
    class_id: int
    label: str
    stage: Literal["coarse", "fine"]
    region_id: int = Field(..., description="zoom region (an id in ``regions``) that produced it; -1 when no zoom "
                                            "region did: the coarse pass, and plan policies (fine, sahi)")


class RegionOut(BaseModel):
    id: int
    box_xyxy: list[int]
    step: int


class CostOut(BaseModel):
    pixels_source: int = Field(..., description="full-resolution pixels read, summed over passes")
    pixels_ratio: float = Field(..., description="detector input pixels / full-resolution pixels (fine = 1.0)")
    model_input_pixels: int
    detector_calls: int


class TimingOut(BaseModel):
    decode: float
    coarse: float
    gain: float
    policy: float
    fine: float
    merge: float
    total: float


class ImageOut(BaseModel):
    width: int
    height: int


class DetectResponse(BaseModel):
    request_id: str
    image: ImageOut
    policy: str
    detections: list[Detection]
    regions: list[RegionOut]
    cost: CostOut
    max_pixels_ratio: float = Field(..., description="the budget that applied (the request's, else the service's)")
    budget_exceeded: bool = Field(..., description="true when the policy spent more than the budget: plan policies "
                                                   "(fine = 1.0, sahi > 1) ignore budgets, and say so here")
    max_latency_ms: Optional[float] = Field(None, description="the deadline that applied (the request's, else the "
                                                              "service's); null: none")
    regions_dropped: int = Field(0, description="zoom windows the policy chose that the deadline left out (not run, "
                                                "not charged, not merged)")
    deadline_exceeded: bool = Field(False, description="true when the answer left later than max_latency_ms after "
                                                       "the request arrived (the coarse pass always runs; plan "
                                                       "policies ignore deadlines)")
    timing_ms: TimingOut
    frames: list[list[int]] = Field(default_factory=list, description="the frames (xyxy) a scene larger than the "
                                                                      "engine's zoom.frame_size ran as, one zoom "
                                                                      "episode each; empty otherwise")
    model: dict[str, Optional[str]] = Field(..., description="checkpoint ids of the detector, R-net and agent")
    trace: Optional[dict] = Field(None, description="zoomdet.episode/1 document when return_trace is set")


class Problem(BaseModel):
    """RFC 9457 problem details (``application/problem+json``)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


class DetectorConfig(BaseModel):
    """``user_config`` of the detector deployment (``DetectorServer``)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Optional[str] = Field(None, description="detector checkpoint; null: the embedded synthetic detector")
    device: str = Field("cpu", description="cpu or cuda")
    batch_size: int = Field(4, ge=1, description="crops per forward pass")
    max_batch_size: int = Field(8, ge=1, description="@serve.batch: crops gathered across requests")
    batch_wait_timeout_s: float = Field(0.001, ge=0, description="@serve.batch: longest wait for a fuller batch")
    torch_threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads of the replica; null: "
                                         "torch's default (Ray sets OMP_NUM_THREADS from num_cpus)")
    proposal_density: float = Field(0.0, ge=0, description="R-CNN detectors: RPN proposals per megapixel of model "
                                                          "input (EvalConfig.proposal_density); 0: the model's fixed count")
    proposal_min: int = Field(100, ge=1, description="with a density: the fewest proposals a call keeps")
    settings: dict[str, Union[int, float]] = Field(default_factory=dict, description="inference settings of the checkpoint's model "
                                       "(EvalConfig.detector_settings), e.g. {roi_sampling_ratio: 1}; {}: as trained")


class ServiceConfig(BaseModel):
    """``user_config`` of the ingress deployment (``ZoomDetIngress``): changes apply without a restart."""

    model_config = ConfigDict(extra="forbid")

    engine_config: Optional[str] = Field(None, description="zoom and policy options: a configs/eval/*.yaml "
                                                           "(EvalConfig; its zoom and policies sections); null: defaults")
    rnet: Optional[str] = Field(None, description="R-net checkpoint: enables the greedy policy (overrides the "
                                                  "engine config's policies.rnet)")
    agent: Optional[str] = Field(None, description="trained agent .zip (zoomdet train), or several DQN "
                                 "agents' .zip joined by + (one policy on their mean Q-values): enables the agent policy")
    default_policy: Optional[str] = Field(None, description="default: agent if set, else greedy if an R-net, else fine")
    max_pixels_ratio: float = Field(0.6, gt=0, le=4, description="default pixel budget, coarse pass included")
    max_steps: int = Field(13, ge=0, le=64, description="default most zoom windows")
    score_threshold: float = Field(0.05, ge=0, le=1, description="default: drop returned detections below this score")
    max_image_pixels: int = Field(40_000_000, gt=0, description="413 above (checked on the header: also stops "
                                                                "decompression bombs)")
    max_body_bytes: int = Field(50_000_000, gt=0, description="413 above: checked on Content-Length, and while "
                                                                "reading the body (chunked uploads stop at the cap)")
    body_timeout_s: float = Field(15.0, gt=0, description="408 when the whole body has not arrived within this "
                                                          "many seconds (a slow client cannot hold a slot longer)")
    max_requests_per_client: Optional[int] = Field(None, ge=1, description="429 (Retry-After: 1) when one client "
                                                   "address already has this many requests in flight on this "
                                                   "replica, so one client cannot take every slot; null: no cap. "
                                                   "Behind a reverse proxy every request has the proxy's address: "
                                                   "cap there instead")
    max_latency_ms: Optional[float] = Field(None, gt=0, le=600_000, description="default deadline of a request, ms "
                                            "from its arrival at the ingress (a request's max_latency_ms overrides "
                                            "it): zoom windows that would end past it are left out, so under load "
                                            "answers shrink toward the coarse pass instead of queueing; null: none")
    max_pass_pixels: Optional[int] = Field(1_500_000, ge=1024, description="largest detector input of one forward "
                                           "call: a larger pass (the fine or coarse pass of a big upload) runs as "
                                           "overlapping tiles, and the crops of a request go to the detector in "
                                           "groups of at most this many pixels, so memory and the wait of a "
                                           "request sent alongside stay bounded whatever the image size; null: off")
    detector: Optional[DetectorConfig] = Field(None, description="the colocated layout only "
                                               "(build_colocated_app, serving/config.colocated.yaml): the detector "
                                               "runs inside this process with these settings, one Serve hop less per "
                                               "pass and no batching across requests; ignored when a DetectorServer "
                                               "is bound")
