from .pipeline_reward_edit import RewardEditPipeline

__all__ = ["RewardEditPipeline"]
