"""volume"""
